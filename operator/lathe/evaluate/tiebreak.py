"""Ties settled by measurement: when the fastest candidates' speedup intervals overlap, every
benchmarked runner is timed in further interleaved rounds at the deciding batch size (the same
statistic over more rounds, benchmark.more_rounds) until the fastest one's interval separates from
the others' or the time budget (spec.target.tieBreakSeconds) is spent. What remains tied goes to
select.break_tie. The worker (worker/pipeline.py) supplies `refresh`: its figures and verdicts
brought up to date from the benchmark."""

from __future__ import annotations

from collections.abc import Callable

from ..api.status import CandidateResult, TieBreak, TieBreakStep
from .benchmark import BenchResult, Feeds, Timer, more_rounds
from .select import leaders

MAX_EXTRA_ROUNDS = 200  # whatever the budget: more rounds than this separate nothing a benchmark can see


def settle(results: list[CandidateResult], bench: dict[str, BenchResult], runners: dict[str, Callable[[Feeds], list]],
           feeds: dict[int, Feeds], baseline: str, batch: int, main_rounds: int, cell_seconds: float,
           budget_seconds: float, refresh: Callable[[], None],
           progress: Callable[[str, float, str], None] | None = None,
           timers: dict[str, Timer] | None = None) -> TieBreak | None:
    """Time further while `leaders(results)` holds more than one candidate; None when there was no tie
    (or no budget). `timers`: as given to the benchmark. `refresh()` must update `results` (speedups, intervals, rounds, verdicts) from `bench`."""
    tied = leaders(results)
    if len(tied) < 2 or budget_seconds <= 0:
        return None
    tb = TieBreak(candidates=[c.name for c in tied], batch=batch, budget_seconds=budget_seconds)

    def step(rounds: int, now: list[CandidateResult]) -> None:
        tb.steps.append(TieBreakStep(rounds=rounds, speedups={c.name: c.speedup_text() or "-" for c in now}))

    step(main_rounds, tied)

    def settled(added: int) -> bool:
        refresh()
        now = leaders(results)
        step(main_rounds + added, now)
        return len(now) < 2

    if progress is not None:
        progress("benchmark", 0.0, f"tie on speed between {', '.join(tb.candidates)}: timing further "
                                   f"(up to {budget_seconds:g} s)")
    extra = more_rounds(bench, runners, feeds, baseline, batch, cell_seconds, budget_seconds, settled,
                        check_every=max(2, main_rounds // 2), max_rounds=MAX_EXTRA_ROUNDS, progress=progress,
                        timers=timers)
    refresh()
    final = leaders(results)
    if tb.steps[-1].rounds != main_rounds + extra.rounds:
        step(main_rounds + extra.rounds, final)
    tb.rounds, tb.seconds, tb.separated = extra.rounds, round(extra.seconds, 3), len(final) < 2
    tb.longest_round = round(extra.longest_round, 4)
    return tb
