"""all-MiniLM-L6-v2 (real weights, real sentences): dynamic int8, fp16 and int4 on ONNX Runtime."""

from __future__ import annotations

import onnx
import pytest

from lathe.api.status import Verdict
from lathe.worker import pipeline

CANDIDATES = [
    {"name": "int8-dynamic", "passes": [{"type": "quantize", "precision": "int8", "mode": "dynamic", "perChannel": True}]},
    {"name": "fp16", "passes": [{"type": "quantize", "precision": "fp16"}]},
    {"name": "int4", "passes": [{"type": "quantize", "precision": "int4", "blockSize": 32}]},
]


@pytest.fixture(scope="module")
def run(minilm, make_spec, tmp_path_factory):
    spec = make_spec(minilm, candidates=CANDIDATES, budget={"maxAccuracyDrop": 0.01}, target={"batchSizes": [1]})
    wd = tmp_path_factory.mktemp("minilm-run")
    return pipeline.run(spec, wd, bench_seconds=4, bench_rounds=3)


def _cand(result, name):
    return next(c for c in result.candidates if c.name == name)


def test_dynamic_int8_keeps_embeddings(run):
    assert run.metric == "cosine" and run.baseline.accuracy == pytest.approx(1.0)
    q = _cand(run, "int8-dynamic")
    assert q.verdict != Verdict.failed, q.reason
    assert q.accuracy >= 0.99 and q.min_cosine > 0.95, q
    assert q.size_bytes * 3 <= run.baseline.size_bytes  # weight MatMuls and the embedding tables are int8
    assert q.precision.get("INT8", 0) >= 36  # 6 layers x 6 weight MatMuls


def test_fp16_keeps_io_types(run):
    h = _cand(run, "fp16")
    assert h.verdict != Verdict.failed, h.reason
    m = onnx.load(h.artifact)
    assert [i.type.tensor_type.elem_type for i in m.graph.input] == [onnx.TensorProto.INT64] * 2
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert h.accuracy >= 0.999 and h.precision.get("FP16", 0) > 0
    assert h.size_ratio < 0.6


def test_int4_is_weight_only_matmulnbits(run):
    q = _cand(run, "int4")
    assert q.verdict != Verdict.failed, q.reason
    ops = {n.op_type for n in onnx.load(q.artifact).graph.node}
    assert "MatMulNBits" in ops and q.precision.get("INT4", 0) == 36
    assert q.accuracy > 0.95


def test_gate_and_selection_consistent(run):
    """Each verdict is the budget's (cosine drop 0.01, measurably faster: the speedup interval above 1.0) and its
    reason names what broke; the winner is the selection rule's pick among those that passed, none when none did."""
    from lathe.evaluate.select import choose

    for c in run.candidates:
        too_far, too_slow = c.accuracy_drop > 0.01, c.speedup_low <= 1.0
        assert (c.verdict == Verdict.passed) == (not too_far and not too_slow), c
        if too_far:
            assert f"(drop {c.accuracy_drop:.3f} > 0.010)" in c.reason, c.reason
        if too_slow:
            assert f"not measurably faster than the baseline: speedup {c.speedup_text()}" in c.reason, c.reason
        if c.verdict == Verdict.passed:
            assert c.reason.startswith("within budget: mean cosine"), c.reason
    passed = [c for c in run.candidates if c.verdict == Verdict.passed]
    assert (run.winner is None) == (not passed), (run.winner, [(c.name, c.reason) for c in run.candidates])
    assert run.winner == choose(run.candidates, material=0.002).winner  # the rule, on the figures shown
    if passed:
        w = run.winner_result()
        assert w.verdict == Verdict.passed and run.selection in w.reason
        # never a winner measurably slower than another candidate that passed
        assert not [c.name for c in passed if c.speedup_low > w.speedup_high], (w.name, run.selection)
    else:
        assert run.selection.startswith("nothing"), run.selection
    assert len(run.compact().encode()) < 4096


def test_peak_memory_is_measured_per_candidate(run):
    """peakMemoryMb: what loading each model afresh and running it adds to the worker's resident memory. ONNX
    Runtime holds a float model's weights in memory (the 87 MiB of FP32 MiniLM at least); INT4 weights take an
    eighth of that, and loading them cannot cost what loading the float weights does."""
    base, int4 = run.baseline, _cand(run, "int4")
    for c in [base, *run.candidates]:
        assert c.peak_memory_mb is not None and c.peak_memory_mb > 0, (c.name, c.peak_memory_mb)
    assert base.peak_memory_mb >= 0.9 * base.size_bytes / 2**20, (base.peak_memory_mb, base.size_bytes)
    assert int4.peak_memory_mb < base.peak_memory_mb - 0.5 * (base.size_bytes - int4.size_bytes) / 2**20, (
        int4.peak_memory_mb, base.peak_memory_mb)
