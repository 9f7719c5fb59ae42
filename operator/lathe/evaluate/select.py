"""Selection: pure functions over CandidateResults.

The speedup a candidate is selected by is the one its row shows (one statistic: the paired
per-round ratio against the baseline, see evaluate/benchmark.py). Candidates whose 95% intervals
overlap the fastest one's are tied on speed; the tie goes to the smallest accuracy drop, then
the smallest size, and the winner's reason says so."""

from __future__ import annotations

from dataclasses import dataclass

from ..api.status import CandidateResult, Verdict
from .metrics import HIGHER_IS_BETTER

_EPS = 1e-9


@dataclass(frozen=True)
class Selection:
    winner: str | None
    reason: str
    tied: tuple[str, ...] = ()


def _interval(c: CandidateResult) -> str:
    return c.speedup_text() or "speedup not measured"


def _overlap(a: CandidateResult, b: CandidateResult) -> bool:
    lo_a, hi_a = a.speedup_low or a.speedup or 0.0, a.speedup_high or a.speedup or 0.0
    lo_b, hi_b = b.speedup_low or b.speedup or 0.0, b.speedup_high or b.speedup or 0.0
    return lo_a <= hi_b and lo_b <= hi_a


def _drop(c: CandidateResult) -> float:
    return c.accuracy_drop if c.accuracy_drop is not None else float("inf")


def _size(c: CandidateResult) -> float:
    return c.size_bytes if c.size_bytes is not None else float("inf")


def _tiebreak_why(pick: CandidateResult, others: list[CandidateResult]) -> str:
    best_other = min(others, key=lambda c: (_drop(c), _size(c)))
    if _drop(pick) < _drop(best_other) - _EPS:
        return f"the smallest accuracy drop ({pick.accuracy_drop:.4f} vs {best_other.accuracy_drop:.4f})"
    if _size(pick) < _size(best_other):
        return f"the smallest size ({_size(pick) / 1e6:.2f} MB vs {_size(best_other) / 1e6:.2f} MB)"
    return "the highest point estimate (equal accuracy drop and size)"


def choose(candidates: list[CandidateResult], objective: str = "latency") -> Selection:
    """The winner among candidates with verdict passed, and why."""
    ok = [c for c in candidates if c.verdict == Verdict.passed]
    if not ok:
        return Selection(None, _nothing_why(candidates))
    if objective == "size":
        pick = min(ok, key=lambda c: (_size(c), _drop(c), -(c.speedup or 0.0)))
        return Selection(pick.name, f"smallest candidate within budget: {_size(pick) / 1e6:.2f} MB"
                                    + (f" ({pick.size_ratio:.2f}x of the baseline)" if pick.size_ratio else "")
                                    + f", speedup {_interval(pick)}")
    fastest = max(ok, key=lambda c: c.speedup if c.speedup is not None else 0.0)
    tied = [c for c in ok if c is fastest or (c.speedup is not None and _overlap(c, fastest))]
    pick = min(tied, key=lambda c: (_drop(c), _size(c), -(c.speedup or 0.0)))
    what = {"latency": "fastest", "first-token": "fastest first token"}.get(objective, "highest throughput")
    if len(tied) == 1:
        return Selection(pick.name, f"{what} within budget: {_interval(pick)}")
    others = [c for c in tied if c is not pick]
    names = ", ".join(f"{c.name} {_interval(c)}" for c in others)
    return Selection(pick.name, f"tied on speed with {names} (95% intervals overlap); {pick.name} "
                                f"{_interval(pick)} chosen for {_tiebreak_why(pick, others)}",
                     tuple(c.name for c in others))


def _nothing_why(candidates: list[CandidateResult]) -> str:
    slow = [c for c in candidates if c.verdict == Verdict.rejected and c.reason.startswith("not measurably faster")]
    if slow:
        best = max(slow, key=lambda c: c.speedup or 0.0)
        return (f"nothing worth publishing: {len(slow)} candidate(s) stay within the accuracy budget but none "
                f"is measurably faster than the baseline (best {best.name} {_interval(best)})")
    if not candidates:
        return "nothing to publish: no candidate was built"
    return "nothing published: no candidate met the budget"


def select(candidates: list[CandidateResult], objective: str = "latency") -> str | None:
    """The winner's name (see `choose`); None when none passed."""
    return choose(candidates, objective).winner


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
