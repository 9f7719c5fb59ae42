"""End to end on the digits CNN trained in the session fixture: quantization, pruning, the budget
gate, selection, the reports."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from lathe.api.status import Verdict, WorkerResult
from lathe.evaluate.benchmark import benchmark
from lathe.storage import sha256_file
from lathe.worker import pipeline
from lathe.worker.backends.onnxruntime import session

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


def test_every_candidate_has_a_verdict_and_reason(run):
    result, _ = run
    for c in result.candidates:
        assert c.verdict in (Verdict.passed, Verdict.rejected), (c.name, c.verdict, c.reason)
        assert c.reason
        assert c.p50_ms and c.p99_ms >= c.p50_ms and c.speedup and c.size_bytes
        if c.verdict == Verdict.passed:
            assert c.accuracy_drop <= 0.01 and c.speedup >= 1.0
    if result.winner:
        w = result.winner_result()
        assert w.verdict == Verdict.passed
        assert w.sha256 == sha256_file(w.artifact)
        assert result.winner in result.pareto or w.p50_ms >= min(c.p50_ms for c in result.candidates)


def test_structured_pruning_removes_parameters_and_time(run):
    result, _ = run
    p = _cand(result, "pruned")
    assert p.accuracy_drop <= 0.01, p
    base_params, pruned_params = _params(result.baseline.artifact), _params(p.artifact)
    assert pruned_params < 0.75 * base_params, (base_params, pruned_params)
    assert "params" in p.passes and "fine-tuned" in p.passes
    # latency: batch 64, interleaved rounds, median of per-round ratios (robust to a noisy 2-core box)
    x = {"input": np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)}
    runners = {}
    for name, path in (("baseline", result.baseline.artifact), ("pruned", p.artifact)):
        s = session(path, 2)
        runners[name] = lambda feeds, s=s: s.run(None, feeds)
    res = benchmark(runners, {64: x}, "baseline", rounds=9, seconds=8)
    assert res["pruned"].speedup > 1.05, res["pruned"].ratios


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
    assert 1 <= len(q.float_nodes) <= 2
    assert q.float_nodes == ranked[: len(q.float_nodes)]
    assert q.verdict == Verdict.rejected and "kept in float" in q.reason
    assert "Sensitivity" in (tmp_path / "w" / "report.html").read_text()
