"""Where a pinned Go test server built by e2e/gotool_build.sh lives (versitygw, fake-gcs-server): its version
in <dir>/go.mod, its build key, its binary in the shared build cache, and the error that names the build
command when it is missing. The same path the build script computes."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class GoTool:
    here: Path  # the folder with go.mod, go.sum and build.sh
    module: str
    name: str  # the binary's name, and its cache folder's prefix
    error: type[Exception]
    cold_minutes: int  # what a first build costs on 2 cores, for the message
    env_override: str | None = None  # a variable naming the binary outright

    @property
    def build_cmd(self) -> str:
        return f"bash {self.here / 'build.sh'}"

    def pinned_version(self) -> str:
        for line in (self.here / "go.mod").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == self.module and parts[1].startswith("v"):
                return parts[1]
        raise self.error(f"{self.module} is not required in {self.here / 'go.mod'}")

    def build_key(self) -> str:
        return hashlib.sha256((self.here / "go.mod").read_bytes() + (self.here / "go.sum").read_bytes()).hexdigest()[:16]

    def default_binary(self) -> Path:
        """The override variable, else the build in ``$LATHE_CONTROLPLANE_CACHE``; with that unset, the build in
        ``<repo>/.cache/controlplane`` (build.sh's default) or else in ``~/.cache/lathe/controlplane``
        (e2e/test.sh's), so a plain ``pytest`` finds what either built."""
        if self.env_override and os.environ.get(self.env_override):
            return Path(os.environ[self.env_override])
        rel = Path(f"{self.name}-{self.pinned_version()}-{self.build_key()}") / self.name
        if os.environ.get("LATHE_CONTROLPLANE_CACHE"):
            return Path(os.environ["LATHE_CONTROLPLANE_CACHE"]) / rel
        candidates = [REPO_ROOT / ".cache" / "controlplane" / rel, Path.home() / ".cache" / "lathe" / "controlplane" / rel]
        return next((c for c in candidates if (c.parent / ".complete").exists()), candidates[0])

    def find_binary(self, binary: Path | str | None = None) -> Path:
        """The binary; raise with the build command when it is missing."""
        path = Path(binary or self.default_binary())
        if not os.access(path, os.X_OK):
            raise self.error(
                f"the test server binary {path} is missing ({self.name} {self.pinned_version()}, key "
                f"{self.build_key()}).\nBuild it first (about {self.cold_minutes} min cold on 2 cores, then reused):\n"
                f"    {self.build_cmd}")
        return path
