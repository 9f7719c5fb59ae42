"""Peak memory of running something, measured in this process: Linux's resident high-water mark
(VmHWM) is reset through /proc/self/clear_refs ("5"), the work runs, and the peak above the
resident size before it is the figure. Memory the allocator reuses from earlier frees is not
counted, so it is a lower bound of what a fresh process would need on top of its start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_added_mb(work: Callable[[], object]) -> float | None:
    """MB of resident memory `work` added at its peak; None where the high-water mark cannot be
    reset (not Linux, or /proc/self/clear_refs not writable)."""
    before = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        work()
        return None
    work()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return round(max(peak - before, 0) / 1024.0, 1)
