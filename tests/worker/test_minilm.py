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
    for c in run.candidates:
        assert c.reason
        if c.verdict == Verdict.passed:
            assert c.accuracy_drop <= 0.01 and c.speedup >= 1.0
        elif c.verdict == Verdict.rejected:
            assert "allowed" in c.reason or "speedup" in c.reason
    if run.winner:
        assert run.winner_result().verdict == Verdict.passed
    assert len(run.compact().encode()) < 4096
