"""The image tars images/build.sh made for the current sources, for test fixtures to load or import.

    from e2e.images.built import built_images
    built_images()  # {"ghcr.io/lathe-dev/lathe-operator:0.1.0": Path(".../lathe-operator-0.1.0-<key>.tar"), ...}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .keys import BUILT, base_key, image_key, ref, tar_path

BUILD_COMMAND = "bash images/build.sh"


class ImagesNotBuilt(RuntimeError):
    pass


def wait_for_build(timeout: float = 1800.0) -> None:
    """When e2e/test.sh builds the images beside the tests ($LATHE_IMAGE_BUILD_STATUS names the file
    its exit code lands in), wait for that build; raise ImagesNotBuilt with its log tail if it failed.
    Without the variable (images built beforehand) return at once."""
    status = os.environ.get("LATHE_IMAGE_BUILD_STATUS")
    if not status:
        return
    deadline = time.monotonic() + timeout
    while not os.path.exists(status):
        if time.monotonic() > deadline:
            raise ImagesNotBuilt(f"`{BUILD_COMMAND}` still running after {timeout:.0f}s")
        time.sleep(1)
    rc = Path(status).read_text().strip()
    if rc != "0":
        log = os.environ.get("LATHE_IMAGE_BUILD_LOG")
        tail = Path(log).read_text()[-3000:] if log and os.path.exists(log) else ""
        raise ImagesNotBuilt(f"`{BUILD_COMMAND}` failed (exit {rc}):\n{tail}")


def built_images(names: tuple[str, ...] = BUILT) -> dict[str, Path]:
    """{ref: docker-save tar} for each image; ImagesNotBuilt (naming the build command) when a tar
    for the current content key is missing (sources changed since the last build, or never built).
    Waits first for a build e2e/test.sh runs beside the tests (wait_for_build)."""
    wait_for_build()
    base = base_key()
    out: dict[str, Path] = {}
    missing = []
    for name in names:
        tar = tar_path(name, image_key(name, base))
        if not (tar.is_file() and Path(f"{tar}.json").is_file()):
            missing.append(f"{name} ({tar})")
        out[ref(name)] = tar
    if missing:
        raise ImagesNotBuilt(f"no image built for the current sources: {', '.join(missing)}; "
                             f"run `{BUILD_COMMAND}` (LATHE_IMAGE_CACHE must match)")
    return out


def tar_info(tar: Path) -> dict:
    """What build.sh recorded beside the tar: ref, key, id (the image ID), size, build_s, save_s."""
    return json.loads(Path(f"{tar}.json").read_text())
