"""The three objectives on the real digits CNN, and what no result may ever show: a winner that
looks slower than a passed loser by its own columns (unless they are tied and its reason says
so), or a row whose p50 and speedup disagree."""

from __future__ import annotations

import pytest

from lathe.api.status import Verdict, WorkerResult
from lathe.worker import pipeline

CANDIDATES = [
    {"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static", "perChannel": True}]},
    {"name": "ort-all", "passes": [{"type": "graph-optimize", "level": "all"}]},
]


def _run(digits, make_spec, tmp_path, objective):
    spec = make_spec(digits, candidates=CANDIDATES, objective=objective,
                     target={"batchSizes": [1, 32], "threads": 2}, budget={"maxAccuracyDrop": 0.02})
    return pipeline.run(spec, tmp_path / objective, bench_seconds=3, bench_rounds=5)


def assert_consistent(result: WorkerResult, by_throughput: bool = False) -> None:
    base = result.baseline
    for c in result.candidates:
        if c.verdict == Verdict.failed:
            continue
        assert c.speedup_low <= c.speedup <= c.speedup_high, c
        if not by_throughput:  # one statistic: speedup is baseline p50 / p50, so they cannot disagree
            assert c.speedup == pytest.approx(base.p50_ms / c.p50_ms, rel=2e-3), (c.name, c.speedup, c.p50_ms)
            assert (c.p50_ms < base.p50_ms) == (c.speedup > 1.0)
    w = result.winner_result()
    if w is None:
        assert result.selection
        return
    assert result.selection in w.reason
    for c in result.candidates:
        if c.verdict == Verdict.passed and c is not w and c.speedup > w.speedup and result.selection[:8] != "smallest":
            assert c.name in result.selection and "tied on speed" in result.selection, (c.name, result.selection)


def test_latency_objective(digits, make_spec, tmp_path):
    result = _run(digits, make_spec, tmp_path, "latency")
    assert "p50 latency at batch 1" in result.speedup_basis
    assert_consistent(result)
    for c in result.candidates:
        if c.verdict == Verdict.passed:
            assert c.speedup_low > 1.0, c  # measurably faster, or not passed


def test_throughput_objective_uses_measured_throughput_at_the_largest_batch(digits, make_spec, tmp_path):
    result = _run(digits, make_spec, tmp_path, "throughput")
    assert result.speedup_basis.startswith("throughput at batch 32")
    assert_consistent(result, by_throughput=True)
    base_tp = next(lat.throughput for lat in result.baseline.latency if lat.batch == 32)
    for c in result.candidates:
        if c.verdict == Verdict.failed:
            continue
        tp = next(lat.throughput for lat in c.latency if lat.batch == 32)
        assert c.speedup == pytest.approx(tp / base_tp, rel=2e-3), (c.name, c.speedup, tp, base_tp)
        p50 = next(lat.p50_ms for lat in c.latency if lat.batch == 32)
        assert tp != pytest.approx(32 / (p50 / 1000.0), rel=1e-6)  # measured, not derived from p50
    if result.winner:
        assert result.selection.startswith(("highest throughput within budget", "tied on speed"))


def test_size_objective_picks_the_smallest_within_budget_whatever_its_speed(digits, make_spec, tmp_path):
    result = _run(digits, make_spec, tmp_path, "size")
    assert_consistent(result)
    passed = [c for c in result.candidates if c.verdict == Verdict.passed]
    assert passed, [(c.name, c.reason) for c in result.candidates]
    assert result.winner == min(passed, key=lambda c: c.size_bytes).name
    assert result.winner.startswith("int8")  # a quarter of the float weights
    assert result.selection.startswith("smallest candidate within budget")
    # no speed requirement for size: a copy that is not faster may still pass
    ort = next(c for c in result.candidates if c.name == "ort-all")
    assert ort.verdict == Verdict.passed or "not measurably faster" not in ort.reason
