"""Fixtures for rollout tests (same real Triton fixtures as tests/serving)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT / "operator", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from e2e.triton.fixtures import digits_models, report_log_tail, triton, triton_repo  # noqa: E402,F401


def pytest_runtest_makereport(item, call):
    report_log_tail(item, call)
