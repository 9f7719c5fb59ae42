"""A local test server process (an object-store emulator): started on a free loopback port in its own
process group (SIGKILLed if the test process dies), ready when ``_ready()`` holds, stopped on every path:
a start that fails stops what it started before raising, ``stop()`` also runs at interpreter exit.
e2e/gcs/fixture.py and e2e/azurite/fixture.py build on it (e2e/s3/fixture.py predates it)."""

from __future__ import annotations

import atexit
import subprocess
import tempfile
import threading
from pathlib import Path

from e2e.controlplane.fixture import _spawn_kwargs, free_port, kill_process_group, tail, wait_ready


class ServerError(RuntimeError):
    pass


class LocalServer:
    name = "server"
    error: type[Exception] = ServerError

    def __init__(self, workdir: Path | str | None = None, *, host: str = "127.0.0.1", port: int | None = None,
                 start_timeout: float = 60.0):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"lathe-{self.name}-"))
        self.host = host
        self._fixed_port = port
        self.port = port or 0
        self.start_timeout = start_timeout
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    # what a subclass says
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _ready(self) -> bool:
        raise NotImplementedError

    # lifecycle
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for attempt in range(1 if self._fixed_port else 3):
            self.port = self._fixed_port or free_port()
            args = self._command()
            with open(self.log_path, "ab") as out:
                out.write(f"$ {' '.join(args)}\n".encode())
                out.flush()
                self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self._env(),
                                             **_spawn_kwargs(self.workdir))
            try:
                wait_ready(self.name, self._ready, self.start_timeout, {self.name: self.proc},
                           {self.name: self.log_path}, error=self.error)
                return
            except self.error as e:
                kill_process_group(self.proc)
                self.proc = None
                taken = "address already in use" in str(e).lower() or "eaddrinuse" in str(e).lower()
                if not taken or self._fixed_port or attempt == 2:
                    where = f" (port {self.host}:{self.port} is taken)" if taken else ""
                    raise self.error(f"cannot start the {self.name} test server{where}: {e}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        with self._lock:
            proc, self.proc = self.proc, None
            if proc is not None:
                kill_process_group(proc)

    def log_tail(self, max_bytes: int = 4000) -> str:
        return tail(self.log_path, max_bytes)
