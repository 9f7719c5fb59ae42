"""Selection: pure functions over CandidateResults."""

from __future__ import annotations

from ..api.status import CandidateResult, Verdict
from .metrics import HIGHER_IS_BETTER


def _key(c: CandidateResult, objective: str):
    p50 = c.p50_ms if c.p50_ms is not None else float("inf")
    if objective == "throughput":
        tp = max((lat.throughput for lat in c.latency), default=0.0)
        return (-tp, p50)
    if objective == "size":
        return (c.size_bytes if c.size_bytes is not None else float("inf"), p50)
    return (p50, c.size_bytes or 0)


def select(candidates: list[CandidateResult], objective: str = "latency") -> str | None:
    """The best candidate with verdict passed by the objective; None when none passed."""
    ok = [c for c in candidates if c.verdict == Verdict.passed]
    if not ok:
        return None
    return min(ok, key=lambda c: _key(c, objective)).name


def pareto(candidates: list[CandidateResult], metric: str, include_failed: bool = False) -> list[str]:
    """Names on the accuracy-vs-latency Pareto front (no other point is both more accurate and faster),
    ordered by latency. By default only candidates that were built and measured count, not failed ones."""
    pts = [c for c in candidates if c.accuracy is not None and c.p50_ms is not None
           and (include_failed or c.verdict != Verdict.failed)]
    sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1
    front = []
    for c in pts:
        dominated = any(
            (o.p50_ms <= c.p50_ms and sign * o.accuracy >= sign * c.accuracy)
            and (o.p50_ms < c.p50_ms or sign * o.accuracy > sign * c.accuracy)
            for o in pts if o is not c)
        if not dominated:
            front.append(c)
    return [c.name for c in sorted(front, key=lambda c: c.p50_ms)]
