"""pytest fixtures shared by tests/serving and tests/rollout: a real Triton + real digits models.

Use in a conftest.py:  from e2e.triton.fixtures import digits_models, triton, triton_repo  # noqa: F401
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .server import TritonServer, available


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory):
    from tests.serving.models import build

    return build(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> dict:
    """A tiny causal LM (tests/serving/llm_models.py) built once per session by the onnxruntime-genai model
    builder: {"fp32", "int8", "int4", "noisy": model folders, "ckpt": the checkpoint, "build": timings}. Built in
    a subprocess, so torch and the builder stay out of the test process."""
    out = tmp_path_factory.mktemp("llm")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-m", "tests.serving.llm_models", str(out)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.fail(f"building the tiny causal LM failed:\n{r.stderr[-3000:]}", pytrace=False)
    paths = {k: out / k for k in ("ckpt", "fp32", "int8", "int4", "noisy")}
    return {**paths, "build": json.loads((out / "build.json").read_text())}


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory):
    return tmp_path_factory.mktemp("work") / "repo"


@pytest.fixture(scope="session")
def triton(triton_repo, tmp_path_factory):
    """A running Triton (real binary, explicit mode) serving `triton_repo`; test-only fault injection on."""
    if not available():
        # A missing server is a broken set-up, not a reason to pass: e2e/setup.sh installs it.
        pytest.fail("nvidia-pytriton (the tritonserver binary) is not installed: run e2e/setup.sh",
                    pytrace=False)
    srv = TritonServer(triton_repo, workdir=tmp_path_factory.mktemp("triton"),
                       env={"LATHE_ALLOW_FAULT_INJECTION": "1"})
    try:
        srv.start()  # inside the try: an interrupt while it starts must not leak the server
        yield srv
    finally:
        if not srv.alive():
            sys.stderr.write(f"tritonserver died; log tail:\n{srv.log_tail()}\n")
        srv.stop()


def report_log_tail(item, call):
    if call.when == "call" and call.excinfo is not None and "triton" in getattr(item, "funcargs", {}):
        item.add_report_section("call", "tritonserver log tail", item.funcargs["triton"].log_tail(30))
