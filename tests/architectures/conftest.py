"""What both architecture tests share: the operator in-process (as tests/operator runs it) under a given
environment, restored on every path, and a fresh namespace per test (tests/operator's fixture)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tests.operator.conftest import OperatorThread, namespace  # noqa: F401  (namespace: re-registered here)


@contextlib.contextmanager
def operator_with(env: dict[str, str]) -> Iterator[OperatorThread]:
    """The operator running with `env` (LATHE_METRICS_PORT among it) set; stopped and the environment put back
    on every path."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    op = OperatorThread(int(env["LATHE_METRICS_PORT"])).start()
    try:
        yield op
    finally:
        op.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
