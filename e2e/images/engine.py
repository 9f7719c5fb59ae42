"""The private Docker engine from Python (tests/images' fixture): e2e/images/dockerd.sh, under the
same lock images/build.sh takes, stopped on every way out of the `with` block."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .keys import ROOT

DOCKERD_SH = ROOT / "e2e/images/dockerd.sh"
DOCKER_CLI = os.environ.get("LATHE_DOCKER_CLI", "/usr/bin/docker")
# What a Lathe pod gives its container: read-only root, /tmp writable (an emptyDir: exec allowed), no
# capabilities, no privilege gain. No --user: the image itself must say 65532.
LOCKED_DOWN = ["--read-only", "--tmpfs", "/tmp:rw,exec,nosuid,nodev,size=4g,mode=1777",
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


class EngineError(RuntimeError):
    pass


def docker_dir() -> Path:
    return Path(os.environ.get("LATHE_DOCKER_DIR") or Path.home() / ".cache/lathe/docker")


class Docker:
    def __init__(self, host: str):
        self.env = {**os.environ, "DOCKER_HOST": host}

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([DOCKER_CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise EngineError(f"docker {' '.join(args[:3])} ... exited {p.returncode}: {p.stderr.strip()[-2000:]}")
        return p

    def image_id(self, ref: str) -> str | None:
        p = self("image", "inspect", "-f", "{{.Id}}", ref, check=False)
        return p.stdout.strip() if p.returncode == 0 else None

    def ensure_loaded(self, ref: str, tar: Path, image_id: str) -> float:
        """Load the tar unless the engine already has exactly that image; returns seconds spent."""
        if self.image_id(ref) == image_id:
            return 0.0
        t0 = time.monotonic()
        self("load", "-i", str(tar), timeout=1800)
        self("image", "prune", "-f")  # the image the tag pointed at before, if nothing else uses it
        if self.image_id(ref) != image_id:
            raise EngineError(f"{tar} did not load as {ref} {image_id} (got {self.image_id(ref)})")
        return time.monotonic() - t0

    def run(self, image: str, *cmd: str, flags: tuple[str, ...] = (), entrypoint: str | None = None,
            network: str = "host", timeout: float = 600) -> subprocess.CompletedProcess:
        """`docker run --rm`, locked down like a Lathe pod (there is no bridge network here: host or
        none); never raises on the command's exit code."""
        args = ["run", "--rm", *LOCKED_DOWN, "--network", network, *flags]
        if entrypoint is not None:
            args += ["--entrypoint", entrypoint]
        return self(*args, image, *cmd, timeout=timeout, check=False)


def _dockerd(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DOCKERD_SH), cmd], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LATHE_DOCKER_DIR": str(docker_dir())})


@contextlib.contextmanager
def private_dockerd(lock_timeout: float = 3600) -> Iterator[Docker]:
    d = docker_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "lock", "w") as lock:
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EngineError(f"{d}/lock is held (images/build.sh running?)") from None
                time.sleep(1)
        try:
            p = _dockerd("start")
            if p.returncode != 0:
                raise EngineError(f"the private dockerd did not start: {p.stderr.strip()[-3000:]}")
            host = p.stdout.strip().split("=", 1)[1]
            yield Docker(host)
        finally:
            p = _dockerd("stop")
            if p.returncode != 0:
                raise EngineError(f"the private dockerd did not stop cleanly: {p.stderr.strip()}")
