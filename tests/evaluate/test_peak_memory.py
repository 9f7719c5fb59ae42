"""peakMemoryMb's measurement (evaluate/memory.py): the resident high-water mark above where the work
started, on work whose memory is known."""

from __future__ import annotations

import numpy as np

from lathe.evaluate.memory import peak_added_mb


def test_peak_added_memory_is_what_the_work_touched():
    def touch(mib: int):
        def work():
            a = np.ones(mib * 2**20 // 8)  # every page written
            return float(a[::4096].sum())
        return work

    small, large = peak_added_mb(touch(16)), peak_added_mb(touch(96))
    assert small is not None and large is not None, "VmHWM cannot be reset here (/proc/self/clear_refs)"
    assert 0.95 * 16 <= small < 16 + 12 and 0.95 * 96 <= large < 96 + 12, (small, large)
    # freed memory is handed back first, so the same work measured again costs the same, not nothing
    again = peak_added_mb(touch(96))
    assert abs(again - large) < 8, (large, again)
    assert peak_added_mb(lambda: None) < 4
