"""One statistic for speedup and selection (evaluate/benchmark.py, select.py, budget.py): pure
rules on hand-made results, and the benchmark on runners whose latency is known."""

from __future__ import annotations

import time

import pytest

from lathe.api.spec import parse_spec
from lathe.api.status import CandidateResult, Verdict
from lathe.evaluate import budget as gate
from lathe.evaluate.benchmark import MIN_P99_SAMPLES, Ratio, benchmark
from lathe.evaluate.select import choose, pareto, select


def _c(name, speedup, low, high, drop=0.0, size=1000, verdict=Verdict.passed, p50=None, acc=None):
    return CandidateResult(name=name, verdict=verdict, speedup=speedup, speedup_low=low, speedup_high=high,
                           accuracy_drop=drop, size_bytes=size, p50_ms=p50 if p50 is not None else 1.0 / speedup,
                           accuracy=acc if acc is not None else 0.99 - drop, reason="")


def _budget(objective="latency", **b):
    spec = parse_spec({"model": {"uri": "m"}, "data": {"validation": {"uri": "v"}}, "budget": b})
    return gate.effective_budget(spec.budget, "top1", objective)[0]


def test_the_fastest_wins_when_nothing_overlaps_it():
    cands = [_c("slow", 1.3, 1.2, 1.4, drop=0.0), _c("fast", 2.0, 1.8, 2.2, drop=0.008)]
    s = choose(cands)
    assert s.winner == "fast" and s.tied == ()
    assert s.reason.startswith("fastest within budget: 2.00x [1.80, 2.20]")


def test_overlapping_intervals_are_a_tie_broken_by_accuracy_then_size():
    cands = [_c("a", 1.60, 1.40, 1.80, drop=0.006), _c("b", 1.55, 1.45, 1.65, drop=0.001),
             _c("c", 1.20, 1.10, 1.30, drop=0.0)]
    s = choose(cands)
    assert s.winner == "b" and s.tied == ("a",)  # c does not overlap a's interval: not tied
    assert "tied on speed with a 1.60x [1.40, 1.80]" in s.reason and "smallest accuracy drop" in s.reason
    same_drop = [_c("a", 1.60, 1.40, 1.80, drop=0.001, size=900_000),
                 _c("b", 1.55, 1.45, 1.65, drop=0.001, size=400_000)]
    s = choose(same_drop)
    assert s.winner == "b" and "chosen for the smallest size (0.40 MB vs 0.90 MB)" in s.reason


def test_the_winner_never_looks_slower_than_a_passed_loser_unless_tied():
    cands = [_c("a", 1.60, 1.40, 1.80, drop=0.006), _c("b", 1.55, 1.45, 1.65, drop=0.001),
             _c("c", 1.20, 1.10, 1.30), _c("d", 3.0, 2.9, 3.1, verdict=Verdict.rejected)]
    s = choose(cands)
    w = next(c for c in cands if c.name == s.winner)
    for c in cands:
        if c.verdict == Verdict.passed and c.speedup > w.speedup:
            assert c.name in s.tied and c.name in s.reason


def test_not_measurably_faster_is_rejected_and_nothing_is_worth_publishing():
    b = _budget()
    flat = _c("ort-optimized", 1.01, 0.97, 1.05)
    fails = gate.performance_failures(flat, b)
    assert fails == ["not measurably faster than the baseline: speedup 1.01x [0.97, 1.05], 95% interval reaches 1.0"]
    faster = _c("int8", 1.3, 1.01, 1.6)
    assert gate.performance_failures(faster, b) == []
    flat.verdict, flat.reason = Verdict.rejected, "; ".join(fails)
    s = choose([flat])
    assert s.winner is None
    assert s.reason.startswith("nothing worth publishing: 1 candidate(s) stay within the accuracy budget")
    assert "ort-optimized 1.01x [0.97, 1.05]" in s.reason


def test_size_objective_needs_no_speedup_and_picks_the_smallest():
    b = _budget("size")
    slowish = _c("small", 0.9, 0.8, 1.0, size=300_000)
    assert gate.performance_failures(slowish, b) == []
    s = choose([slowish, _c("fast", 2.0, 1.9, 2.1, size=900_000)], "size")
    assert s.winner == "small" and s.reason.startswith("smallest candidate within budget: 0.30 MB")


def test_min_speedup_compares_the_point_estimate():
    b = _budget(minSpeedup=1.5)
    assert gate.performance_failures(_c("x", 1.4, 1.2, 1.6), b) == ["speedup 1.40x < 1.50x required"]
    assert gate.performance_failures(_c("y", 1.55, 1.3, 1.8), b) == []


def test_min_speedup_zero_lifts_the_speed_rule():
    slow = _c("x", 0.9, 0.8, 1.0)
    assert gate.performance_failures(slow, _budget(minSpeedup=0)) == []
    assert gate.performance_failures(slow, _budget())[0].startswith("not measurably faster")


def test_budget_reason_has_numbers():
    base = CandidateResult(name="baseline", accuracy=1.0)
    c = CandidateResult(name="x", accuracy=0.156, accuracy_drop=0.844, relative_drop=0.844, p99_ms=12.0,
                        speedup=0.8, speedup_low=0.7, speedup_high=0.9, size_bytes=5_000_000)
    b = _budget(maxAccuracyDrop=0.01, maxP99LatencyMs=10, maxSizeMb=4)
    fails = gate.accuracy_failures(c, base, "top1", b) + gate.performance_failures(c, b)
    assert fails == ["top-1 0.156 < 0.990 allowed (drop 0.844 > 0.010)",
                     "not measurably faster than the baseline: speedup 0.80x [0.70, 0.90], 95% interval reaches 1.0",
                     "p99 latency 12.00 ms > 10.00 ms allowed", "size 5.00 MB > 4.00 MB allowed"]


def test_select_and_pareto():
    cands = [_c("slow-accurate", 1.1, 1.05, 1.15, p50=10.0, acc=0.99), _c("fast", 3.3, 3.1, 3.5, p50=3.0, acc=0.97),
             _c("dominated", 2.0, 1.9, 2.1, p50=5.0, acc=0.96),
             _c("fastest-rejected", 10.0, 9.0, 11.0, p50=1.0, acc=0.5, verdict=Verdict.rejected)]
    assert select(cands, "latency") == "fast"
    assert pareto(cands, "top1") == ["fastest-rejected", "fast", "slow-accurate"]
    assert select([cands[-1]], "latency") is None


def test_ratio_interval_from_paired_rounds():
    r = Ratio.of([2.0, 2.0, 2.0])
    assert (r.value, r.low, r.high) == pytest.approx((2.0, 2.0, 2.0))
    r = Ratio.of([1.9, 2.1, 2.0, 1.95, 2.05])
    assert r.low < 2.0 < r.high and r.faster()
    assert not Ratio.of([0.9, 1.1, 1.0]).faster()


def _sleeper(ms):
    def run(_):
        time.sleep(ms / 1000.0)
        return []
    return run


def test_speedup_is_the_ratio_of_the_reported_p50s():
    res = benchmark({"baseline": _sleeper(8), "fast": _sleeper(2)}, {1: {}}, "baseline", rounds=5, seconds=0.6)
    base, fast = res["baseline"], res["fast"]
    assert base.speedup == pytest.approx(1.0)
    # one statistic: the speedup column is exactly baseline p50 / candidate p50
    assert fast.speedup == pytest.approx(base.timings[1].p50 / fast.timings[1].p50, rel=1e-9)
    assert 1.5 < fast.speedup < 8.0  # 4x nominal; sleeps overshoot on a loaded box
    assert fast.latency.low <= fast.speedup <= fast.latency.high
    assert len(fast.ratios) == 5


def test_p99_needs_enough_calls_and_throughput_is_measured():
    """Calls of 1, 1 and 13 ms: the p50 says 1 ms, the real rate is one call per 5 ms. The times come from a
    runner's own timer (the hook GPU engines use), so a busy machine's scheduler cannot reshape them."""
    def bimodal(_feeds, iters):
        return [13.0 if k % 3 == 2 else 1.0 for k in range(iters)]

    res = benchmark({"baseline": lambda _: []}, {4: {}}, "baseline", rounds=2, seconds=0.5, min_iters=30,
                    max_iters=30, timers={"baseline": bimodal})
    t = res["baseline"].timings[4]
    assert len(t.samples_ms) < MIN_P99_SAMPLES and t.pct(99) is None and t.pct(50) == 1.0
    assert t.throughput == pytest.approx(4 / 0.005)  # 4 samples per 5 ms: measured over the calls
    assert t.throughput < 0.25 * 4 / (t.pct(50) / 1000.0)  # not derived from the p50 (4000/s)


def test_p99_is_reported_with_enough_calls():
    res = benchmark({"baseline": lambda _: []}, {1: {}}, "baseline", rounds=2, seconds=0.05, min_iters=400)
    t = res["baseline"].timings[1]
    assert len(t.samples_ms) >= MIN_P99_SAMPLES and t.pct(99) is not None and t.pct(99) >= t.pct(50)


def test_a_runner_can_bring_its_own_timer():
    """A GPU engine is timed with CUDA events (backends/tensorrt.py `event_timer`), not the host clock: the harness
    uses a runner's timer when given one, in the same interleaved rounds and statistic. Here the timers report
    fixed times for no-op runners (whose host time is ~0), so only the timers can make the speedup 2."""
    calls: list[tuple[str, int]] = []

    def fixed(name: str, ms: float):
        def timed(feeds, iters):
            calls.append((name, iters))
            return [ms] * iters
        return timed

    noop = lambda feeds: []  # noqa: E731
    res = benchmark({"ref": noop, "fast": noop}, {1: {}}, "ref", rounds=3, seconds=0.01,
                    timers={"ref": fixed("ref", 2.0), "fast": fixed("fast", 1.0)})
    assert res["fast"].latency.value == pytest.approx(2.0) and res["fast"].timings[1].p50 == pytest.approx(1.0)
    assert [n for n, _ in calls].count("ref") == 3 and all(i >= 3 for _, i in calls)  # one cell per round
