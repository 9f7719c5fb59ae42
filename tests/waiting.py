"""Polling for the tests that watch real components (API server, node agent, Triton) settle."""

from __future__ import annotations

import time


def wait_for(cond, timeout=30.0, interval=0.1, what="condition"):
    """Poll `cond` until it returns something truthy (returned), at least once and until `timeout`
    seconds have passed; then fail, naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
        time.sleep(interval)
