"""The GPU worker's Dockerfile cannot be built here (its base is on nvcr.io, no registry is reachable, no GPU):
what can be checked without building it is that it pins what the backend was written against and runs as
non-root. images/README.md lists what is assumed beyond that."""

from __future__ import annotations

import re

from e2e.images.locks import ROOT
from lathe.worker.backends import tensorrt as trtb

DOCKERFILE = ROOT / "images" / "worker-gpu.Dockerfile"


def _args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))


def test_the_gpu_image_pins_the_tensorrt_the_backend_is_typed_against():
    args = _args()
    base = args["BASE"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", base), f"base not pinned to a release: {base}"
    assert args["TENSORRT_VERSION"].startswith(trtb.TRT_API + "."), (args["TENSORRT_VERSION"], trtb.TRT_API)
    assert args["TENSORRT_BINDINGS"] in ("tensorrt-cu12-bindings", "tensorrt-cu13-bindings")
    setup = (ROOT / "e2e" / "setup.sh").read_text()
    assert f"UV_VERSION={args['UV_VERSION']}" in setup and f"pip=={args['PIP_VERSION']}" in setup
    assert args["PYTHON_VERSION"].startswith("3.11.")


def test_the_gpu_image_runs_as_non_root_and_installs_its_own_lock():
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert "COPY images/worker-gpu.lock" in text and "--no-deps --only-binary=:all: -r /tmp/image.lock" in text
    lock = (ROOT / "images" / "worker-gpu.lock").read_text()
    # ModelOpt from the lock; TensorRT never from PyPI's `tensorrt` (the base has its libraries)
    assert "nvidia-modelopt==" in lock and not re.search(r"^tensorrt", lock, flags=re.M)
