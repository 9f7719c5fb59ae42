"""The memory limit this worker runs under: $LATHE_MEMORY_LIMIT (the operator sets it from the Job's
limits.memory), else the memory cgroup's own limit (v2 memory.max, v1 memory.limit_in_bytes; `lathe run`
inside a container), else None."""

from __future__ import annotations

import os
from pathlib import Path

_CGROUP_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1


def memory_limit() -> str | None:
    env = os.environ.get("LATHE_MEMORY_LIMIT")
    if env:
        return env
    for f in _CGROUP_FILES:
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _UNLIMITED:
            return text
    return None
