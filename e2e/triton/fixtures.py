"""pytest fixtures shared by tests/serving and tests/rollout: a real Triton + real digits models.

Use in a conftest.py:  from e2e.triton.fixtures import digits_models, triton, triton_repo  # noqa: F401
"""

from __future__ import annotations

import sys

import pytest

from .server import TritonServer, available


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory):
    from tests.serving.models import build

    return build(tmp_path_factory.mktemp("models"))


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
