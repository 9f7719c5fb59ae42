"""End to end on the digits CNN trained in the session fixture: quantization, pruning, the budget
gate, selection, the reports."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import onnx
import pytest

from lathe.api.status import Verdict, WorkerResult
from lathe.storage import sha256_file
from lathe.worker import pipeline

CANDIDATES = [
    {"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static", "perChannel": True}]},
    {"name": "pruned", "passes": [{"type": "prune", "method": "structured", "sparsity": 0.25,
                                   "fineTune": {"epochs": 3, "learningRate": 0.0003}}]},
    {"name": "sparse", "passes": [{"type": "prune", "method": "unstructured", "sparsity": 0.5}]},
    {"name": "ort-all", "passes": [{"type": "graph-optimize", "level": "all"}]},
]


@pytest.fixture(scope="module")
def run(digits, make_spec, tmp_path_factory):
    spec = make_spec(digits, candidates=CANDIDATES, target={"batchSizes": [64], "threads": 2},
                     budget={"maxAccuracyDrop": 0.01})
    workdir = tmp_path_factory.mktemp("digits-run")
    result = pipeline.run(spec, workdir, bench_seconds=6, bench_rounds=5)
    return result, workdir


def _cand(result, name):
    return next(c for c in result.candidates if c.name == name)


def _params(path) -> int:
    return int(sum(np.prod(i.dims) for i in onnx.load(str(path)).graph.initializer))


def test_int8_is_smaller_and_accurate(run):
    result, _ = run
    q = _cand(result, "int8-static")
    assert q.verdict != Verdict.failed, q.reason
    assert q.size_bytes * 3 <= result.baseline.size_bytes, (q.size_bytes, result.baseline.size_bytes)
    assert q.accuracy_drop <= 0.01, q
    assert q.precision.get("INT8", 0) > 0, q.precision  # the runtime really runs int8 kernels
    assert result.baseline.accuracy > 0.97


def _interval(c) -> tuple[float, float]:
    """The speedup's 95% interval (the point estimate where none was computed)."""
    return (c.speedup if c.speedup_low is None else c.speedup_low, c.speedup if c.speedup_high is None else c.speedup_high)


def test_every_candidate_has_a_verdict_and_reason(run):
    result, _ = run
    for c in result.candidates:
        assert c.verdict in (Verdict.passed, Verdict.rejected), (c.name, c.verdict, c.reason)
        assert c.reason
        assert c.p50_ms and c.speedup and c.size_bytes
        if c.p99_ms is not None:
            assert c.p99_ms >= c.p50_ms
        else:  # too few timed calls for a 99th percentile
            assert c.latency and all(lat.samples < 500 for lat in c.latency), c.latency
        low = _interval(c)[0]
        if c.verdict == Verdict.passed:
            assert c.accuracy_drop <= 0.01 and c.speedup >= 1.0 and low > 1.0, c
        else:  # rejected for a gate it broke: the accuracy budget, or not measurably faster
            assert c.accuracy_drop > 0.01 or low <= 1.0, c
    # Objective latency: the fastest candidate within budget wins; those whose speedup intervals
    # overlap the fastest one's are tied with it, and the tie goes to the smallest drop, then size.
    # None within budget, no winner.
    passed = [c for c in result.candidates if c.verdict == Verdict.passed]
    assert (result.winner is None) == (not passed), [(c.name, c.verdict, c.reason) for c in result.candidates]
    if passed:
        fastest = max(passed, key=lambda c: c.speedup)
        lo, hi = _interval(fastest)
        tied = [c for c in passed if _interval(c)[0] <= hi and lo <= _interval(c)[1]]
        w = result.winner_result()
        assert w in tied, ([(c.name, c.speedup_low, c.speedup, c.speedup_high) for c in passed], w.name)
        assert (w.accuracy_drop, w.size_bytes) == min((c.accuracy_drop, c.size_bytes) for c in tied), tied
        assert w.sha256 == sha256_file(w.artifact)
    # the Pareto front: exactly the measured points no other is both at least as fast and as accurate as
    measured = [c for c in [result.baseline, *result.candidates] if c.verdict != Verdict.failed]
    front = [c.name for c in sorted(measured, key=lambda c: c.p50_ms)
             if not any(o is not c and o.p50_ms <= c.p50_ms and o.accuracy >= c.accuracy
                        and (o.p50_ms < c.p50_ms or o.accuracy > c.accuracy) for o in measured)]
    assert front and result.pareto == front, (result.pareto, [(c.name, c.p50_ms, c.accuracy) for c in measured])


def test_structured_pruning_removes_parameters(run):
    result, _ = run
    p = _cand(result, "pruned")
    assert p.accuracy_drop <= 0.01, p
    base_params, pruned_params = _params(result.baseline.artifact), _params(p.artifact)
    assert pruned_params < 0.75 * base_params, (base_params, pruned_params)
    assert "params" in p.passes and "fine-tuned" in p.passes
    # How much faster it runs is a benchmark figure (e2e/bench/cpu_bench.py, `lathe run`), not a
    # timed assertion here.


def test_unstructured_sparsity_is_reported_honestly(run):
    result, _ = run
    s = _cand(result, "sparse")
    assert any("no speedup expected" in w for w in s.warnings)
    assert s.speedup is not None  # measured, not assumed
    m = onnx.load(s.artifact)
    w = [onnx.numpy_helper.to_array(i) for i in m.graph.initializer if i.name.endswith("weight")]
    assert max(float((a == 0).mean()) for a in w) >= 0.49


def test_reports_written(run):
    result, workdir = run
    doc = json.loads((workdir / "result.json").read_text())
    again = WorkerResult.model_validate(doc)
    assert [c.name for c in again.candidates] == [c["name"] for c in CANDIDATES]
    html = (workdir / "report.html").read_text()
    assert "<svg" in html and "accuracy budget" in html and "int8-static" in html
    assert len(result.compact().encode()) < 4096
    for c in result.candidates:
        assert (workdir / "candidates" / c.name / "model.onnx").exists()


def test_calibration_missing_class_fails_static_candidates(digits, make_spec, tmp_path):
    cal = np.load(digits["calibration"])
    keep = cal["labels"] != 3
    path = tmp_path / "cal-no3.npz"
    np.savez(path, input=cal["input"][keep], labels=cal["labels"][keep])
    spec = make_spec(digits, candidates=[CANDIDATES[0], CANDIDATES[3]], target={"batchSizes": [1]})
    spec.data.calibration.uri = str(path)
    result = pipeline.run(spec, tmp_path / "w", bench_seconds=1, bench_rounds=2)
    q = _cand(result, "int8-static")
    assert q.verdict == Verdict.failed
    assert "misses class(es) [3]" in q.reason and q.reason.startswith("calibration:")
    assert _cand(result, "ort-all").verdict != Verdict.failed  # other candidates still measured


def test_mixed_precision_keeps_the_most_sensitive_nodes_in_float(digits, make_spec, tmp_path):
    cand = dict(CANDIDATES[0], fallback={"enabled": True, "maxFloatNodes": 2})
    spec = make_spec(digits, candidates=[cand], task={"type": "classification", "metric": "cosine"},
                     budget={"maxAccuracyDrop": 1e-7}, target={"batchSizes": [1]})
    result = pipeline.run(spec, tmp_path / "w", bench_seconds=1, bench_rounds=2)
    q = result.candidates[0]
    details = json.loads((tmp_path / "w" / "details.json").read_text())
    ranked = [n for n, _ in details["candidates"]["int8-static"]["sensitivity"]]
    # Every quantized Conv and Gemm is ranked, also the Convs whose Relu the quantizer fused into
    # them (their own output tensor is gone from the quantized graph), and with real differences.
    import onnx

    float_graph = onnx.load(str(result.baseline.artifact)).graph
    quantizable = {n.name for n in float_graph.node if n.op_type in ("Conv", "Gemm")}
    assert set(ranked) == quantizable, (ranked, quantizable)
    assert sum(score > 1e-6 for _, score in details["candidates"]["int8-static"]["sensitivity"]) >= 2
    assert 1 <= len(q.float_nodes) <= 2
    assert q.float_nodes == ranked[: len(q.float_nodes)]
    assert q.verdict == Verdict.rejected and "kept in float" in q.reason
    scores = dict(details["candidates"]["int8-static"]["sensitivity"])
    rows = _sensitivity_rows((tmp_path / "w" / "report.html").read_text(), "int8-static")
    assert [n for n, _, _ in rows] == ranked[:24], rows  # the ranking, most sensitive first (24 shown)
    kept = [(n, score) for n, score, marked in rows if marked]
    assert [n for n, _ in kept] == q.float_nodes, (kept, q.float_nodes)  # marked kept in float: those only
    for n, score in kept:
        assert score == pytest.approx(scores[n], rel=1e-3), (n, score, scores[n])


def _sensitivity_rows(report: str, candidate: str) -> list[tuple[str, float, bool]]:
    """(node, error added, marked as kept in float) per row of `candidate`'s table in the report's
    sensitivity section."""
    section = re.split(r"<h2>|<p style=", report.split("<h2>Sensitivity of nodes kept in float</h2>", 1)[1])[0]
    assert f"<h3>{html.escape(candidate)}</h3>" in section, section[:500]
    table = section.split(f"<h3>{html.escape(candidate)}</h3>", 1)[1].split("</table>", 1)[0]
    return [(html.unescape(name), float(score), bool(mark))
            for mark, name, score in re.findall(r"<tr><td>(● )?([^<]*)</td><td>([^<]*)</td>", table)]
