"""Training data (spec.data.training) and quantization-aware training (quantize mode qat) with its
forgetting guard: spec checks (no heavy imports), then one real run on the digits CNN: PTQ and QAT
of the same graph side by side in the same gate, and an aggressive learning rate the guard stops."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from lathe.api.spec import parse_spec
from lathe.api.status import Verdict
from lathe.worker import data
from lathe.worker.passes import default_candidates, validate_candidates
from lathe.worker.passes.prune import fine_tune_data

TORCH_MODEL = {"uri": "m.pt", "format": "torchscript", "inputs": [{"name": "input", "shape": ["batch", 1, 8, 8]}]}
QAT = {"type": "quantize", "precision": "int8", "mode": "qat"}


def _spec(candidates, model=None, **data_sets):
    return parse_spec({"model": model or TORCH_MODEL,
                       "data": {"validation": {"uri": "v.npz"}, **{k: {"uri": v} for k, v in data_sets.items()}},
                       "candidates": candidates})


def test_qat_needs_training_data_named_by_field_path():
    problems = validate_candidates(_spec([{"name": "x", "passes": [QAT]}], calibration="c.npz"))
    assert problems == ["spec.data.training: required by candidate 'x' pass 0 (quantize mode qat)"]
    assert validate_candidates(_spec([{"name": "x", "passes": [QAT]}], training="t.npz")) == []
    # right after structured pruning (both work on the PyTorch model) is fine too
    pruned = [{"type": "prune", "method": "structured"}, QAT]
    assert validate_candidates(_spec([{"name": "x", "passes": pruned}], training="t.npz")) == []


def test_qat_refusals_name_their_fields():
    problems = validate_candidates(_spec([
        {"name": "a", "passes": [QAT]},
        {"name": "b", "passes": [{"type": "graph-optimize"}, QAT]},
        {"name": "c", "passes": [{**QAT, "calibration": {"method": "entropy"}}]},
        {"name": "d", "passes": [{"type": "quantize", "precision": "int8", "mode": "static", "qat": {"epochs": 3}}]},
    ], model={"uri": "m.onnx"}, training="t.npz"))
    text = "\n".join(problems)
    assert "spec.candidates[0].passes[0].mode: qat trains the PyTorch model: it needs model.format torchscript" in text
    assert "spec.candidates[1].passes[1].mode: qat trains the PyTorch model and must come first" in text
    assert "spec.candidates[2].passes[0].calibration.method: qat trains through MinMax ranges" in text
    assert "spec.candidates[3].passes[0].qat: only used by mode qat (mode is static)" in text
    with pytest.raises(ValueError, match=r"learningRate"):  # range-checked by the schema
        _spec([{"name": "a", "passes": [{**QAT, "qat": {"learningRate": 0.5}}]}], training="t.npz")
    with pytest.raises(ValueError, match=r"epochs"):
        _spec([{"name": "a", "passes": [{**QAT, "qat": {"epochs": 6}}]}], training="t.npz")
    q = _spec([{"name": "a", "passes": [QAT]}], training="t.npz").candidates[0].passes[0]
    assert q.qat is None  # defaults apply in the pass: 3 epochs, lr 1e-5, guard 0.02, 20% held out


def test_prune_fine_tune_never_trains_on_the_validation_set():
    ft = [{"name": "p", "passes": [{"type": "prune", "method": "structured", "fineTune": {"epochs": 2}}]}]
    assert validate_candidates(_spec(ft)) == [
        "spec.data.training: required by candidate 'p' pass 0 (prune fineTune) when there is no "
        "spec.data.calibration: fine-tuning would otherwise train on the validation set the gate measures"]
    assert validate_candidates(_spec(ft, calibration="c.npz")) == []
    train, cal = object(), object()
    ctx = SimpleNamespace(training=train, calibration=cal, calibration_is_validation=False)
    assert fine_tune_data(ctx) == (train, "training set")
    ctx.training = None
    assert fine_tune_data(ctx)[0] is cal
    ctx.calibration_is_validation = True  # the default candidates' pruning, no data.calibration
    ds, why = fine_tune_data(ctx)
    assert ds is None and "validation set" in why


def test_default_candidates_add_qat_with_training_data():
    names = [c.name for c in default_candidates(_spec([], training="t.npz"), "conv", "onnxruntime")]
    assert "int8-qat" in names and "int8-static" in names
    assert "int8-qat" not in [c.name for c in default_candidates(_spec([]), "conv", "onnxruntime")]
    onnx_model = _spec([], model={"uri": "m.onnx"}, training="t.npz")
    assert "int8-qat" not in [c.name for c in default_candidates(onnx_model, "conv", "onnxruntime")]


def test_training_data_is_checked_like_the_others(tmp_path):
    inputs = [data.InputMeta("input", ["batch", 1, 8, 8])]
    bad = tmp_path / "t.npz"
    np.savez(bad, image=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(data.InvalidInput, match=r"training data .*no array for model input\(s\) \['input'\]"):
        data.load(bad, inputs, "training")
    x = np.random.default_rng(0).random((10, 1, 8, 8), dtype=np.float32)
    a = data.load(tmp_path / "a.npz", inputs, "training", arrays={"input": x[:6]})
    b = data.load(tmp_path / "b.npz", inputs, "validation", arrays={"input": x[4:]})
    assert data.shared_samples(a, b) == 2


@pytest.fixture(scope="module")
def qat_run(digits, make_spec, tmp_path_factory):
    from lathe.worker import pipeline

    q = {"type": "quantize", "precision": "int8", "perChannel": True}
    cands = [{"name": "ptq", "passes": [{**q, "mode": "static"}]},
             {"name": "qat", "passes": [{**q, "mode": "qat"}]},
             {"name": "qat-hot", "passes": [{**q, "mode": "qat", "qat": {"learningRate": 0.1}}]}]
    # one thread: training this small a model on 2 threads of a shared 2-core machine is 10x slower
    spec = make_spec(digits, training=True, candidates=cands, target={"batchSizes": [64], "threads": 1},
                     budget={"maxAccuracyDrop": 0.01, "minSpeedup": 0})
    events = []
    workdir = tmp_path_factory.mktemp("qat-run")
    result = pipeline.run(spec, workdir, lambda s, f, m: events.append((s, m)), bench_seconds=1, bench_rounds=2)
    details = json.loads((workdir / "details.json").read_text())
    return result, details, events


def _cand(result, name):
    return next(c for c in result.candidates if c.name == name)


def test_qat_at_least_as_accurate_as_ptq_of_the_same_graph(qat_run):
    result, details, events = qat_run
    ptq, qat = _cand(result, "ptq"), _cand(result, "qat")
    for c in (ptq, qat):  # same gate, both real INT8 Q/DQ models on ONNX Runtime
        assert c.verdict in (Verdict.passed, Verdict.rejected), (c.name, c.reason)
        assert c.precision.get("INT8", 0) >= 5, c.precision
    assert qat.accuracy >= ptq.accuracy, (qat.accuracy, ptq.accuracy)
    tr = details["candidates"]["qat"]["training"]
    assert tr["metric"] == "top-1" and tr["learning_rate"] == 1e-5 and tr["stopped"] is None
    assert [e["epoch"] for e in tr["epochs"]] == [0, 1, 2, 3]  # epoch 0: fake-quantized, untrained
    assert tr["held_out_samples"] == 220 and tr["train_samples"] == 880  # 20% of the 1100 training samples
    assert tr["fake_quantized"] == {"layers": 5, "batchnorms_folded": 1, "activations": 6}
    kept = tr["epochs"][tr["best_epoch"]]["held_out"]
    assert kept == max(e["held_out"] for e in tr["epochs"])
    assert "qat 3 ep (lr 1e-05)" in qat.passes and f"kept epoch {tr['best_epoch']}" in qat.passes
    logged = [m for s, m in events if s == "qat:qat" and m.startswith("epoch ")]
    assert len(logged) == 3 and "held-out top-1" in logged[0], logged


def test_aggressive_learning_rate_is_stopped_by_the_forgetting_guard(qat_run):
    result, details, _ = qat_run
    hot, ptq = _cand(result, "qat-hot"), _cand(result, "ptq")
    tr = details["candidates"]["qat-hot"]["training"]
    assert tr["stopped"] and tr["stopped"].startswith("forgetting guard: stopped after epoch 1 of 3"), tr
    assert len(tr["epochs"]) == 2 and tr["best_epoch"] == 0
    assert tr["epochs"][1]["held_out"] < tr["float_held_out"] - 0.02
    assert any(w.startswith("forgetting guard: stopped after epoch 1") for w in hot.warnings), hot.warnings
    # epoch 0 kept: the untrained weights, quantized as PTQ quantizes them
    assert hot.verdict != Verdict.failed and abs(hot.accuracy - ptq.accuracy) <= 1 / 397 + 1e-9
