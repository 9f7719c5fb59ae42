"""Runtime tensorrt's graph-space precision (worker/passes/graph_precision.py) on real models, on the CPU: NVIDIA
ModelOpt's ONNX tools write FP16/BF16 casts and INT8/FP8/INT4 Q/DQ into the graph, and the pipeline judges each
graph with ONNX Runtime before any engine build. No TensorRT here: every candidate that meets the budget ends
`failed` with "engine not built", one that breaks it ends `rejected` before a build is even tried."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lathe.api.spec import ModelOptimizationSpec
from lathe.worker import pipeline, samples
from lathe.worker.backends import tensorrt as trtb
from lathe.worker.backends.onnxruntime import session
from lathe.worker.passes import candidate_problems, tensorrt_candidates
from lathe.worker.passes.graph_precision import emulate_low_precision, needs_emulation

GPU = {"device": "gpu", "runtimes": ["tensorrt"]}


def _cand(name: str, **q) -> dict:
    return {"name": name, "runtime": "tensorrt", "passes": [{"type": "quantize", **q}]}


def _run(sample: dict, tmp: Path, cands: list[dict], **spec) -> dict:
    s = samples.spec_for(sample, **{"target": GPU, "candidates": cands, **spec})
    r = pipeline.run(ModelOptimizationSpec.model_validate(s), tmp / "work", bench_seconds=0.3, bench_rounds=2)
    return {c.name: c for c in r.candidates}


def _outputs(path: Path, feeds: dict) -> np.ndarray:
    sess = session(path, 1)
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: feeds[k] for k in names})[0]


def test_digits_cnn_graphs_carry_their_precision_and_are_judged_on_the_cpu(digits, tmp_path):
    from onnxruntime.quantization.calibrate import HistogramCollector, MinMaxCalibrater

    before = dict(vars(MinMaxCalibrater)), dict(vars(HistogramCollector))
    cands = [_cand("trt-fp16", precision="fp16"), _cand("trt-bf16", precision="bf16"),
             _cand("trt-int8", precision="int8"), _cand("trt-fp8", precision="fp8"),
             # ONNX Runtime's own static INT8 after ModelOpt's runs, in the same process: ModelOpt patches ONNX
             # Runtime's calibrators while it quantizes, and the pass must undo that
             {"name": "ort-int8", "runtime": "onnxruntime", "passes": [{"type": "quantize", "mode": "static"}]}]
    got = _run(digits, tmp_path, cands, target={**GPU, "runtimes": ["tensorrt", "onnxruntime"]})
    assert (dict(vars(MinMaxCalibrater)), dict(vars(HistogramCollector))) == before
    assert got["ort-int8"].verdict != "failed" and got["ort-int8"].accuracy_drop < 0.01, got["ort-int8"]
    val = np.load(digits["validation"])
    base = _outputs(tmp_path / "work" / "baseline" / "model.onnx", {"input": val["input"]})
    errors = {}
    for name, want in [("trt-fp16", "FP16"), ("trt-bf16", "BF16"), ("trt-int8", "INT8"), ("trt-fp8", "FP8")]:
        c = got[name]
        graph = Path(c.artifact)
        assert graph.name == "graph.onnx" and graph.exists(), c
        m = onnx.load(str(graph))
        ops = Counter(n.op_type for n in m.graph.node)
        assert trtb.graph_precision(graph) == want, (name, ops)  # what TensorRT's audit will hold the engine to
        if want in ("INT8", "FP8"):
            qtype = TensorProto.INT8 if want == "INT8" else TensorProto.FLOAT8E4M3FN
            assert ops["QuantizeLinear"] >= 3 and ops["DequantizeLinear"] >= 3, ops
            assert any(i.data_type == qtype for i in m.graph.initializer), f"{name}: no {want} zero points"
        low = TensorProto.BFLOAT16 if want == "BF16" else TensorProto.FLOAT16
        assert any(i.data_type == low for i in m.graph.initializer), f"{name}: weights not in {low}"
        # judged on the CPU, labelled so, and not built: this machine has no TensorRT
        assert c.accuracy_source == "emulated", c
        assert c.verdict == "failed" and "within the budget; engine not built: tensorrt is not installed" in c.reason, c
        assert c.accuracy_drop is not None and c.accuracy_drop <= 0.01, c
        assert not list(graph.parent.rglob("*.plan")), "an engine file where none can be built"
        emulated = next(graph.parent.rglob("emulated/model.onnx"))
        out = _outputs(emulated, {"input": val["input"]})
        errors[name] = float(np.linalg.norm(out - base) / np.linalg.norm(base))
    # the precision is really applied (outputs move), coarser types move them more
    assert all(e > 1e-5 for e in errors.values()), errors
    assert errors["trt-fp16"] < errors["trt-bf16"] < errors["trt-fp8"], errors
    assert errors["trt-fp16"] < errors["trt-int8"], errors


def test_minilm_graphs_and_a_broken_budget_rejected_on_the_cpu_before_any_build(minilm, tmp_path):
    """MiniLM-L6 (embeddings, cosine budget 0.01): INT8 Q/DQ on every MatMul (attention included, TensorRT's
    placement) does not hold the budget on this model, and is rejected on the CPU, so a TensorRT worker never
    builds it; INT4 weight-only puts blocked INT4 weights behind DequantizeLinear on the MatMuls. (FP16 and BF16
    are the digits test's; on MiniLM they hold the budget: docs/gpu.md.)"""
    got = _run(minilm, tmp_path, [_cand("trt-int8", precision="int8", calibration={"samples": 16}),
                                  _cand("trt-int4", precision="int4", blockSize=32)])
    int8, int4 = got["trt-int8"], got["trt-int4"]
    assert trtb.graph_precision(int8.artifact) == "INT8"
    assert int8.verdict == "rejected", int8
    assert int8.reason.startswith("emulated on the CPU (ONNX Runtime, INT8 graph): mean cosine ") and \
        int8.reason.endswith("no engine built"), int8.reason
    assert int8.accuracy_drop > 0.01 and int8.accuracy_source == "emulated" and int8.speedup is None, int8
    m = onnx.load(int4.artifact)
    inits = {i.name: i for i in m.graph.initializer}
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
          and inits[n.input[0]].data_type == TensorProto.INT4]
    assert len(dq) >= 6 * 4, f"{len(dq)} INT4 weight DequantizeLinear nodes"  # 6 layers x (q, k, v, out, ffn...)
    # blockSize applied: every INT4 DequantizeLinear says block 32, and its scales hold one value per 32 weights
    sizes = [a.i for n in dq for a in n.attribute if a.name == "block_size"]
    assert sizes == [32] * len(dq), f"block_size attributes {sorted(set(sizes))} on {len(dq)} INT4 weight nodes"
    for n in dq:
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        w, scale = inits[n.input[0]].dims, inits[n.input[1]].dims
        assert len(scale) == len(w) and scale[axis] == -(-w[axis] // 32), (n.name, list(w), list(scale), axis)
    assert int4.accuracy_source == "emulated" and int4.accuracy is not None, int4


@pytest.mark.parametrize("low,np_type", [(TensorProto.FLOAT16, np.float16), (TensorProto.BFLOAT16, ml_dtypes.bfloat16)])
def test_emulation_rounds_every_reduced_tensor_like_the_type_itself(low, np_type):
    """x -> Cast(low) -> Mul(w) -> Add(b) -> Cast(float): the emulated FP32 graph must equal numpy computing in
    the reduced type (each op's result rounded to it) exactly."""
    rng = np.random.RandomState(0)
    w = rng.randn(64).astype(np_type)
    b = rng.randn(64).astype(np_type)
    x = (rng.randn(8, 64) * 3).astype(np.float32)

    def tensor(name, arr):
        t = numpy_helper.from_array(arr, name)
        assert t.data_type == low
        return t

    g = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xl"], to=low), helper.make_node("Mul", ["xl", "w"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["a"]), helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])], [tensor("w", w), tensor("b", b)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "m.onnx", Path(tmp) / "e.onnx"
        onnx.save(model, str(src))
        assert needs_emulation(src)
        stats = emulate_low_precision(src, dst)
        y = session(dst, 1).run(None, {"x": x})[0]
    assert stats == {"initializers": 2, "casts": 1, "rounded": 2}, stats
    want = ((x.astype(np_type) * w).astype(np_type) + b).astype(np_type).astype(np.float32)
    np.testing.assert_array_equal(y, want)
    assert not np.array_equal(y, x * w.astype(np.float32) + b.astype(np.float32))  # rounding did something


def test_the_gpu_defaults_follow_the_architecture():
    names = lambda cc, fam="conv": [c.name for c in tensorrt_candidates(fam, cc)]  # noqa: E731
    assert names("7.5") == ["trt-fp16", "trt-int8"]                      # Turing: no BF16, no FP8
    assert names("8.0") == ["trt-fp16", "trt-bf16", "trt-int8"]          # A100: BF16, no FP8
    assert names("8.9") == ["trt-fp16", "trt-bf16", "trt-int8", "trt-fp8"]
    assert names("9.0", "transformer")[-1] == "trt-int4-weights"
    assert names(None) == ["trt-fp16", "trt-bf16", "trt-int8", "trt-fp8"]  # unknown GPU: all, judged on the CPU
    for c in tensorrt_candidates("transformer", None):
        spec = ModelOptimizationSpec.model_validate(samples.spec_for(
            {"model": "m.onnx", "format": "onnx", "task": "embedding", "calibration": "c.npz", "validation": "v.npz",
             "inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]}, target=GPU))
        assert candidate_problems(spec, 0, c) == [], c.name


def test_settings_tensorrt_does_not_take_are_refused_by_field():
    spec = ModelOptimizationSpec.model_validate(samples.spec_for(
        {"model": "m.onnx", "format": "onnx", "task": "classification", "calibration": "c.npz",
         "validation": "v.npz", "inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]},
        target=GPU, candidates=[]))
    from lathe.api.spec import Candidate

    def problems(**q):
        return candidate_problems(spec, 0, Candidate.model_validate(_cand("c", **q)))

    assert problems(precision="int8", mode="dynamic") == [
        "spec.candidates[0].passes[0].mode: runtime tensorrt calibrates int8 statically (ModelOpt Q/DQ): mode must "
        "be static or unset (mode is dynamic; quantization-aware training for TensorRT is not built)"]
    assert problems(precision="int8", perChannel=True)[0].startswith(
        "spec.candidates[0].passes[0].perChannel: an ONNX Runtime quantizer setting")
    assert problems(precision="fp8", calibration={"method": "percentile"}) == [
        "spec.candidates[0].passes[0].calibration.method: ModelOpt calibrates with max (minmax) or entropy, "
        "not percentile"]
    assert problems(precision="fp16", blockSize=64) == [
        "spec.candidates[0].passes[0].blockSize: only used by precision int4 (precision is fp16)"]
    cpu = spec.model_copy(update={"target": spec.target.model_copy(update={"device": "cpu", "runtimes": []})})
    ort = Candidate.model_validate({"name": "c", "passes": [{"type": "quantize", "precision": "fp8"}]})
    assert candidate_problems(cpu, 0, ort) == [
        "spec.candidates[0].passes[0].precision: fp8 is built by runtime tensorrt only (candidate runtime is "
        "onnxruntime)"]


def test_mixed_precision_on_the_emulated_graph_keeps_the_breaking_node_in_float(outlier_cnn, tmp_path):
    sample = outlier_cnn  # conftest.py: one input channel at a constant 500 breaks per-tensor INT8
    got = _run(sample, tmp_path, [
        {**_cand("int8-plain", precision="int8"), "fallback": {"enabled": False}},
        {**_cand("int8-mixed", precision="int8"), "fallback": {"maxFloatNodes": 2}}],
        budget={"maxAccuracyDrop": 0.02})
    first = "/features/2/Conv"  # the second convolution, as torch's exporter names it
    assert first in {n.name for n in onnx.load(str(tmp_path / "work" / "baseline" / "model.onnx")).graph.node}
    plain, mixed = got["int8-plain"], got["int8-mixed"]
    assert plain.verdict == "rejected" and plain.accuracy_drop > 0.3, plain  # pixels rounded to zero
    assert mixed.float_nodes == [first], mixed
    assert mixed.accuracy_drop <= 0.02 and "within the budget; engine not built" in mixed.reason, mixed
    # the graph kept for the engine build is the one with that node in float: its input is not quantized
    m = onnx.load(mixed.artifact)
    gemm = next(n for n in m.graph.node if n.name == first)
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    assert producers.get(gemm.input[0]) != "DequantizeLinear", [producers.get(i) for i in gemm.input]
    assert trtb.graph_precision(mixed.artifact) == "INT8"  # the rest is still INT8


def test_a_graph_where_modelopt_places_no_qdq_fails_before_any_build(tmp_path):
    """An 8-wide MLP: ModelOpt's TensorRT rules leave matrix multiplies under 16 wide in FP16, so an "INT8"
    candidate would be an FP16 engine under another name (the seed's "enabled INT8 but the engine runs FP16")."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.5, (8, 8)).astype(np.float32), rng.normal(0, 0.5, (8, 4)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2"], ["logits"], name="fc2")], "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "mlp.onnx"))
    x = rng.normal(0, 1, (96, 8)).astype(np.float32)
    labels = (np.maximum(x @ w1, 0) @ w2).argmax(1)
    np.savez(tmp_path / "cal.npz", input=x[:48], labels=labels[:48])
    np.savez(tmp_path / "val.npz", input=x[48:], labels=labels[48:])
    sample = {"model": tmp_path / "mlp.onnx", "calibration": tmp_path / "cal.npz", "validation": tmp_path / "val.npz",
              "format": "onnx", "task": "classification",
              "inputs": [{"name": "input", "shape": ["batch", 8], "dtype": "float32"}]}
    c = _run(sample, tmp_path, [_cand("trt-int8", precision="int8")])["trt-int8"]
    assert c.verdict == "failed" and c.reason.startswith(
        "pass:quantize: ModelOpt placed no INT8 Q/DQ in this graph (it is FP16)"), c.reason
