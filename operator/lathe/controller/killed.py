"""A worker the kernel killed, said as such (pure): what it was doing (its last progress line: stage and
batch size), under which memory limit, and how sure we are that memory was the cause.

The kubelet reports `OOMKilled` when containerd saw the memory cgroup's OOM event. containerd 1.6 on a
busy machine can lose that event's race with the exit and report `Error` with exit code 137 (SIGKILL)
while the kernel's log shows the memory cgroup's OOM kill of that container (issue 21): a SIGKILL under a
memory limit is therefore said as "most likely for memory", never as certain."""

from __future__ import annotations

import re
from collections.abc import Sequence

SIGKILL_EXIT = 137  # 128 + 9
# what worker.progress logs: "... [benchmark]  50%, ETA 3s round 2/10 batch 64 int8-static"
_PROGRESS = re.compile(r"\[(?P<stage>[a-z][a-z0-9:. _-]*)\]\s+\d+%(?:, ETA \d+s)?\s*(?P<message>.*)$")
_BATCH = re.compile(r"\bbatch (?P<batch>\d+)\b")


def last_progress(log: str | None) -> tuple[str | None, str | None, int | None]:
    """(stage, message, batch size) of the worker's last progress line in a log tail."""
    for line in reversed((log or "").splitlines()):
        m = _PROGRESS.search(line)
        if m:
            b = _BATCH.search(m.group("message"))
            return m.group("stage"), m.group("message").strip(), int(b.group("batch")) if b else None
    return None, None, None


def killed_detail(exit_code: int | None, reason: str | None, memory_limit: str | None, log: str | None,
                  batch_sizes: Sequence[int] | None) -> str | None:
    """The message for a worker killed for memory, or None when it was not (another exit, or a SIGKILL
    with no memory limit to blame)."""
    oom = reason == "OOMKilled"
    if not oom and not (exit_code == SIGKILL_EXIT and memory_limit):
        return None
    stage, message, batch = last_progress(log)
    limit = f"its memory limit {memory_limit}" if memory_limit else "its memory limit"
    if oom:
        head = f"OOMKilled: the worker needed more than {limit} (exit code {exit_code})"
    else:
        head = (f"killed by SIGKILL (exit code 137, reason {reason or 'none'}) under {limit}: most likely for "
                "memory (the kernel's OOM killer; the container runtime did not report OOMKilled)")
    where = f" during {stage}" if stage else " before its first progress line"
    if batch is not None:
        where += f" at batch size {batch}"
    elif batch_sizes:
        where += f" (batch sizes {', '.join(map(str, batch_sizes))})"
    if message and batch is None and not message.startswith("batch sizes"):
        where += f": {message[:200]}"
    return (f"{head}{where}; raise spec.target.resources.limits.memory or benchmark smaller batches "
            "(spec.target.batchSizes)")
