"""Selection: pure functions over CandidateResults.

The speedup a candidate is selected by is the one its row shows (one statistic: the paired
per-round ratio against the baseline, see evaluate/benchmark.py). Candidates whose 95% intervals
overlap the fastest one's are tied on speed (`leaders`); the worker first times them in further
interleaved rounds (spec.target.tieBreakSeconds, worker/pipeline.py), and a tie that remains goes
to a materially smaller accuracy drop, then a materially smaller size, else to the highest point
estimate; the winner's reason says which."""

from __future__ import annotations

from dataclasses import dataclass

from ..api.status import CandidateResult, Verdict
from .metrics import HIGHER_IS_BETTER

# A remaining tie on speed is broken by accuracy only when the accuracy drops differ by at least this
# share of the accuracy budget (a fifth: 0.002 of top-1 under maxAccuracyDrop 0.01), and by size only
# when the smaller model is at least MATERIAL_SIZE smaller; anything less is noise beside a speedup.
MATERIAL_DROP_SHARE = 0.2
MATERIAL_SIZE = 0.10
DEFAULT_MATERIAL_DROP = 0.002  # a fifth of the default accuracy budget (0.01)


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


def material_drop(budget: dict, baseline_accuracy: float | None) -> float:
    """The accuracy-drop difference that counts in a tie: MATERIAL_DROP_SHARE of the budget's absolute
    limit, else of its relative limit times the baseline's accuracy, else DEFAULT_MATERIAL_DROP."""
    if budget.get("max_accuracy_drop") is not None:
        return MATERIAL_DROP_SHARE * float(budget["max_accuracy_drop"])
    if budget.get("max_relative_drop") is not None and baseline_accuracy is not None:
        return MATERIAL_DROP_SHARE * float(budget["max_relative_drop"]) * abs(baseline_accuracy)
    return DEFAULT_MATERIAL_DROP


def leaders(candidates: list[CandidateResult]) -> list[CandidateResult]:
    """The passed candidates tied on speed with the fastest (its own interval overlaps theirs), the fastest
    first; one element when the fastest stands alone, none when nothing passed."""
    ok = [c for c in candidates if c.verdict == Verdict.passed]
    if not ok:
        return []
    fastest = max(ok, key=lambda c: c.speedup if c.speedup is not None else 0.0)
    return [fastest] + [c for c in ok if c is not fastest and c.speedup is not None and _overlap(c, fastest)]


def break_tie(tied: list[CandidateResult], material: float = DEFAULT_MATERIAL_DROP) -> tuple[CandidateResult, str]:
    """The pick among candidates tied on speed, and why: the candidates whose accuracy drop is within `material`
    of the best stay (the others leave, said in the reason); of those, one at least MATERIAL_SIZE smaller than
    every other, else the highest point estimate."""
    best_drop = min(_drop(c) for c in tied)
    close = [c for c in tied if _drop(c) == best_drop or _drop(c) - best_drop < material]
    left = [c for c in tied if c not in close]
    why = ""
    if left:
        best = min(close, key=_drop)
        why = (f"a materially smaller accuracy drop ({best.accuracy_drop:.4f} vs "
               + ", ".join(f"{c.name} {c.accuracy_drop:.4f}" for c in left) + f"; material: {material:.4g} or more)")
        if len(close) == 1:
            return close[0], why
        why += ", then "
    smallest = min(close, key=_size)
    rest = [c for c in close if c is not smallest]
    if _size(smallest) < float("inf") and all(_size(smallest) <= (1 - MATERIAL_SIZE) * _size(c) for c in rest):
        other = min(rest, key=_size)
        return smallest, why + (f"the smallest size ({_size(smallest) / 1e6:.2f} MB vs {_size(other) / 1e6:.2f} MB; "
                                f"material: {MATERIAL_SIZE:.0%} or more smaller)")
    pick = max(close, key=lambda c: c.speedup or 0.0)
    return pick, why + (f"the highest point estimate (accuracy drops within {material:.4g} and sizes within "
                        f"{MATERIAL_SIZE:.0%} of each other"
                        + (f" among {', '.join(c.name for c in close)})" if left else ")"))


def choose(candidates: list[CandidateResult], objective: str = "latency",
           material: float = DEFAULT_MATERIAL_DROP) -> Selection:
    """The winner among candidates with verdict passed, and why. `material`: the accuracy-drop
    difference that breaks a tie on speed (see `material_drop`)."""
    ok = [c for c in candidates if c.verdict == Verdict.passed]
    if not ok:
        return Selection(None, _nothing_why(candidates))
    if objective == "size":
        pick = min(ok, key=lambda c: (_size(c), _drop(c), -(c.speedup or 0.0)))
        return Selection(pick.name, f"smallest candidate within budget: {_size(pick) / 1e6:.2f} MB"
                                    + (f" ({pick.size_ratio:.2f}x of the baseline)" if pick.size_ratio else "")
                                    + f", speedup {_interval(pick)}")
    tied = leaders(ok)
    what = {"latency": "fastest", "first-token": "fastest first token"}.get(objective, "highest throughput")
    if len(tied) == 1:
        return Selection(tied[0].name, f"{what} within budget: {_interval(tied[0])}")
    pick, why = break_tie(tied, material)
    others = [c for c in tied if c is not pick]
    names = ", ".join(f"{c.name} {_interval(c)}" for c in others)
    return Selection(pick.name, f"tied on speed with {names} (95% intervals overlap); {pick.name} "
                                f"{_interval(pick)} chosen for {why}",
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
