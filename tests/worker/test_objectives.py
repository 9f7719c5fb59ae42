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


def _run(digits, make_spec, tmp_path, objective, **budget):
    spec = make_spec(digits, candidates=CANDIDATES, objective=objective,
                     target={"batchSizes": [1, 32], "threads": 2}, budget={"maxAccuracyDrop": 0.02, **budget})
    return pipeline.run(spec, tmp_path / objective, bench_seconds=3, bench_rounds=5)


def assert_consistent(result: WorkerResult, by_throughput: bool = False) -> None:
    base = result.baseline
    for c in result.candidates:
        if c.verdict == Verdict.failed:
            continue
        assert c.speedup_low <= c.speedup <= c.speedup_high, c
        if not by_throughput:  # one statistic: speedup is baseline p50 / p50, so they cannot disagree
            assert c.speedup == pytest.approx(base.p50_ms / c.p50_ms, rel=2e-3), (c.name, c.speedup, c.p50_ms)
            # never a faster p50 beside a speedup below 1 (or the reverse); both are rounded (p50 to 10 ns, the
            # speedup to 4 decimals), so a difference finer than that may show on one side only (0.0664 ms
            # twice beside 1.0001x, seen on a busy machine)
            assert not (c.p50_ms < base.p50_ms and c.speedup < 1.0), (c.name, c.p50_ms, base.p50_ms, c.speedup)
            assert not (c.p50_ms > base.p50_ms and c.speedup > 1.0), (c.name, c.p50_ms, base.p50_ms, c.speedup)
    w = result.winner_result()
    passed = [c for c in result.candidates if c.verdict == Verdict.passed]
    assert (w is None) == (not passed), (result.winner, [(c.name, c.verdict) for c in result.candidates])
    if w is None:
        assert result.selection.startswith("nothing"), result.selection
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
    # minSpeedup 0: ort-all (the same model) always passes, so a winner is picked by throughput on every machine
    result = _run(digits, make_spec, tmp_path, "throughput", minSpeedup=0)
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
    passed = [c for c in result.candidates if c.verdict == Verdict.passed]
    assert "ort-all" in [c.name for c in passed], [(c.name, c.reason) for c in result.candidates]
    best = max(passed, key=lambda c: c.speedup)
    if result.selection.startswith("highest throughput within budget"):
        assert result.winner == best.name and best.speedup_low > max(
            (c.speedup_high for c in passed if c is not best), default=0.0), result.selection
    else:  # intervals overlapping the best one's: tied, settled as the reason says
        assert result.selection.startswith("tied on speed"), result.selection
        assert all(c.name in result.selection for c in passed), result.selection


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


def test_a_tie_on_speed_is_timed_further_and_reported(digits, make_spec, tmp_path):
    """Two copies of one candidate after a single benchmark round (an interval of [0, inf]: a tie for sure): the
    worker times them further within target.tieBreakSeconds, every row's speedup is then made of the same, longer
    series of rounds, and the status, table, HTML and result.json say so. Whether noise separates two copies or
    not, the pick must follow from the figures the result shows."""
    import json

    from lathe.evaluate.table import table

    copies = [{"name": n, "passes": [{"type": "graph-optimize", "level": "all"}]} for n in ("ort-a", "ort-b")]
    spec = make_spec(digits, candidates=copies, target={"batchSizes": [8], "threads": 1, "tieBreakSeconds": 1.5},
                     budget={"maxAccuracyDrop": 0.02, "minSpeedup": 0})
    result = pipeline.run(spec, tmp_path / "tie", bench_seconds=0.5, bench_rounds=1)
    tb = result.tie_break
    assert tb is not None and tb.candidates in (["ort-a", "ort-b"], ["ort-b", "ort-a"]) and tb.batch == 8, tb
    assert tb.rounds >= 1 and tb.seconds <= tb.budget_seconds + tb.longest_round and tb.budget_seconds == 1.5, tb
    assert tb.steps[0].rounds == 1 and tb.steps[-1].rounds == 1 + tb.rounds, tb.steps
    for c in [result.baseline, *result.candidates]:
        assert c.rounds == 1 + tb.rounds and len(c.latency) == 1, (c.name, c.rounds)
    assert_consistent(result)  # one statistic over the longer series: speedup = baseline p50 / p50
    assert f"over 1 interleaved rounds, plus {tb.rounds} more at batch 8 to settle a tie" in result.speedup_basis
    assert f"after {tb.rounds} more interleaved round(s) at batch 8" in result.selection, result.selection
    a, b = result.candidates
    w = result.winner_result()
    if tb.separated:
        assert result.selection.startswith("fastest within budget") and w.speedup_low > min(a, b, key=lambda c: c.speedup).speedup_high
    else:  # the same model: the same drop and size, so the point estimate decides
        assert a.accuracy_drop == b.accuracy_drop and "highest point estimate" in result.selection, result.selection
        assert w.speedup == max(a.speedup, b.speedup)
    # where a user reads it: the status (the termination message), the table, the HTML report, result.json
    assert [c["rounds"] for c in json.loads(result.compact())["candidates"]] == [1 + tb.rounds] * 2
    text = table(result)
    assert f"tie on speed between {', '.join(tb.candidates)}: {tb.rounds} more interleaved round(s)" in text, text
    html = (tmp_path / "tie" / "report.html").read_text()
    assert 'id="tie-break"' in html and f"{tb.rounds} more interleaved round(s)" in html
    doc = json.loads((tmp_path / "tie" / "result.json").read_text())
    assert doc["tieBreak"]["rounds"] == tb.rounds and len(doc["tieBreak"]["steps"]) == len(tb.steps)
