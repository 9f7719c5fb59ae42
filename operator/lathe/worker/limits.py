"""The memory limit this worker runs under: $LATHE_MEMORY_LIMIT (the operator sets it from the container's
limits.memory through the Downward API, in bytes: the node's allocatable memory without a limit), else the
memory cgroup's own limit (v2 memory.max, v1 memory.limit_in_bytes; `lathe run` inside a container), else
None; `memory_limit_bytes` falls back to the machine's memory."""

from __future__ import annotations

import os
from pathlib import Path

from lathe.evaluate.batch_memory import parse_quantity

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


def memory_limit_bytes() -> int | None:
    """The limit in bytes; outside any limit (`lathe run` on a host) the machine's MemTotal."""
    limit = parse_quantity(memory_limit())
    if limit:
        return limit
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None
