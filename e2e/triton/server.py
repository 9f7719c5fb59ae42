"""Start and stop a REAL Triton Inference Server from the `nvidia-pytriton` wheel (CPU, python backend).

Importable by tests (tests/serving/conftest.py), the benchmark and `.ci/run`:

    from e2e.triton.server import TritonServer
    with TritonServer(repository="/tmp/repo") as srv:
        srv.http_url      # "127.0.0.1:PORT" for tritonclient.http
        srv.metrics_url   # "http://127.0.0.1:PORT/metrics"

Also a CLI:  python -m e2e.triton.server REPO   (prints the URLs, serves until Ctrl-C).

What it does (the recipe in shared/recipes/triton, gotchas included):
- copies the wheel's python backend + the stub matching this interpreter into a private
  backend directory (the wheel's own dir is read-only-ish and shared);
- LD_LIBRARY_PATH gets the wheel's bundled `nvidia_pytriton.libs`; the venv's `bin` goes first on
  PATH so the stub's embedded interpreter finds the venv (numpy, onnxruntime);
- `--model-control-mode=explicit` (nothing loads at start), `--strict-readiness=false` (otherwise one
  failed load turns server readiness to 400 for good), loopback only, free ports, log to a file;
- on a failed start the log tail is in the exception; `stop()` SIGTERMs our own PID only and waits
  (the stubs are its children), then SIGKILLs if needed; the server gets SIGKILL if the process
  that started it dies first (PR_SET_PDEATHSIG), so a killed test run leaves none behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from e2e.controlplane.fixture import die_with_parent


class TritonStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wheel_paths(python: str | None = None) -> tuple[Path, Path]:
    """(pytriton/tritonserver dir, nvidia_pytriton.libs dir) of the wheel installed for `python`."""
    if python is None or Path(python).resolve() == Path(sys.executable).resolve():
        purelib = sysconfig.get_paths()["purelib"]
    else:
        purelib = subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    ts = Path(purelib) / "pytriton" / "tritonserver"
    libs = Path(purelib) / "nvidia_pytriton.libs"
    if not (ts / "bin" / "tritonserver").exists():
        raise TritonStartError(f"tritonserver binary not found under {ts}: pip install nvidia-pytriton")
    return ts, libs


def available() -> bool:
    try:
        wheel_paths()
        return True
    except TritonStartError:
        return False


class TritonServer:
    def __init__(self, repository: str | os.PathLike, *, workdir: str | os.PathLike | None = None,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 start_timeout: float = 60.0, log_verbose: int = 0, exit_timeout: int = 3,
                 host: str = "127.0.0.1"):
        """``host``: the address to serve on (loopback; the test node's bridge for pods to reach)."""
        # A local folder (created at start) or a URL Triton reads itself (s3://host:port/bucket/prefix).
        self.repository = str(repository) if "://" in str(repository) else Path(repository)
        self.host = host
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lathe-triton-"))
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.log_verbose = log_verbose
        self.exit_timeout = exit_timeout  # Triton waits this long for open client connections at stop
        self.proc: subprocess.Popen | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.log_path = self.workdir / "tritonserver.log"

    # -- urls
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- lifecycle
    def start(self) -> TritonServer:
        ts, libs = wheel_paths()
        pyver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        backends = self.workdir / "backends"
        if not (backends / "python" / "triton_python_backend_stub").exists():
            shutil.rmtree(backends / "python", ignore_errors=True)
            shutil.copytree(ts / "backends" / "python", backends / "python",
                            ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(ts / "python_backend_stubs" / pyver / "triton_python_backend_stub", backends / "python")
        if isinstance(self.repository, Path):
            self.repository.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = f"{libs}" + (f":{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else "")
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env.update(self.env)
        last_err = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind: retry with new ports
            self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
            args = [str(ts / "bin" / "tritonserver"),
                    f"--model-repository={self.repository}",
                    f"--backend-directory={backends}",
                    f"--cache-directory={ts / 'caches'}",
                    "--model-control-mode=explicit", "--strict-readiness=false",
                    f"--http-address={self.host}", f"--grpc-address={self.host}", f"--metrics-address={self.host}",
                    f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                    f"--metrics-port={self.metrics_port}", "--allow-metrics=true", "--allow-gpu-metrics=false",
                    "--log-info=true", f"--log-verbose={self.log_verbose}",
                    f"--exit-timeout-secs={self.exit_timeout}", *self.extra_args]
            log = open(self.log_path, "ab")
            # Killed with the process that started it: a hard-killed test run leaves no server behind.
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
            log.close()
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_err = f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}"
                    break
                if self._ready():
                    return self
                time.sleep(0.05)
            else:
                self.stop()
                raise TritonStartError(f"tritonserver not ready after {self.start_timeout}s:\n{self.log_tail()}")
            if "address already in use" not in last_err.lower():
                break
        self.proc = None
        raise TritonStartError(last_err)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def cleanup(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            sys.stderr.write(f"--- tritonserver log tail ({self.log_path}) ---\n{self.log_tail()}\n")
        self.cleanup()


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Serve a model repository with the pytriton wheel's Triton (explicit mode).")
    ap.add_argument("repository")
    a = ap.parse_args(argv)
    with TritonServer(a.repository, workdir=tempfile.mkdtemp(prefix="lathe-triton-")) as srv:
        print(f"http {srv.http_url} grpc {srv.grpc_url} metrics {srv.metrics_url} log {srv.log_path}", flush=True)
        try:
            while srv.alive():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
