"""The TensorRT backend's logic that runs without TensorRT or a GPU: optimization profiles, the parser's
per-node errors, the engine inspector's JSON in the shapes of TensorRT 10 and 11, the precision audit and its
budget rule, the timing-cache key, and how the backend says it is unavailable. The engine build, run and
benchmark themselves were never executed (docs/gpu.md)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lathe.api.spec import ModelOptimizationSpec
from lathe.worker.backends import get_backend, unavailable_reason
from lathe.worker.backends import tensorrt as trtb

HERE = Path(__file__).parent / "tensorrt_inspector"


# ------------------------------------------------------------------------------------- profiles
def test_profiles_derived_from_batch_sizes():
    profs = trtb.derive_profiles({"x": ["batch", 1, 32, 32]}, [8, 1, 64])
    assert profs[0] == {"x": {"min": [1, 1, 32, 32], "opt": [8, 1, 32, 32], "max": [64, 1, 32, 32]}}
    # every other batch size gets an exact profile, so that each is benchmarked on kernels tuned for it
    assert [p["x"]["opt"][0] for p in profs] == [8, 1, 64]
    assert profs[2] == {"x": {"min": [64, 1, 32, 32], "opt": [64, 1, 32, 32], "max": [64, 1, 32, 32]}}


def test_static_model_gets_one_profile():
    assert trtb.derive_profiles({"x": [4, 3]}, [1, 4]) == [{"x": {"min": [4, 3], "opt": [4, 3], "max": [4, 3]}}]


def test_dynamic_non_batch_dims_come_from_the_data_or_fail_by_name():
    inputs = {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    hints = {"input_ids": [1, 128], "attention_mask": [1, 128]}
    profs = trtb.derive_profiles(inputs, [1, 32], hints=hints)
    assert profs[0]["attention_mask"] == {"min": [1, 128], "opt": [1, 128], "max": [32, 128]}
    assert profs[1]["input_ids"] == {"min": [32, 128], "opt": [32, 128], "max": [32, 128]}
    with pytest.raises(ValueError, match=r"input 'input_ids' dim 1 \('seq'\) is dynamic"):
        trtb.derive_profiles(inputs, [1])


def test_declared_profiles_group_by_input_and_fill_the_rest():
    inputs = {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    declared = [{"input": "input_ids", "min": [1, 16], "opt": [8, 128], "max": [32, 256]},
                {"input": "attention_mask", "min": [1, 16], "opt": [8, 128], "max": [32, 256]},
                {"input": "input_ids", "min": [64, 128], "opt": [64, 128], "max": [64, 128]}]
    profs = trtb.derive_profiles(inputs, [8], declared, hints={"attention_mask": [1, 128]})
    assert len(profs) == 2
    assert profs[0]["input_ids"] == {"min": [1, 16], "opt": [8, 128], "max": [32, 256]}
    assert profs[1]["input_ids"]["opt"] == [64, 128]
    # profile 1 does not name attention_mask: the derived range (batch 1..8, seq from the data)
    assert profs[1]["attention_mask"] == {"min": [1, 128], "opt": [8, 128], "max": [8, 128]}


@pytest.mark.parametrize("entry, message", [
    ({"input": "y", "min": [1], "opt": [1], "max": [1]}, r"profiles\[0\]\.input: the model has no input 'y'"),
    ({"input": "x", "min": [1, 3], "opt": [1, 3], "max": [1, 3]}, r"profiles\[0\]\.min: \[1, 3\] has rank 2"),
    ({"input": "x", "min": [1, 2, 8, 8], "opt": [1, 1, 8, 8], "max": [1, 1, 8, 8]}, r"min\[1\]: 2 differs from the model's fixed dim 1"),
    ({"input": "x", "min": [4, 1, 8, 8], "opt": [2, 1, 8, 8], "max": [8, 1, 8, 8]}, r"dim 0 needs min <= opt <= max, got 4, 2, 8"),
    ({"input": "x", "min": [0, 1, 8, 8], "opt": [2, 1, 8, 8], "max": [8, 1, 8, 8]}, r"min\[0\]: dims must be >= 1"),
])
def test_declared_profiles_are_checked_with_their_field_path(entry, message):
    with pytest.raises(ValueError, match=message):
        trtb.derive_profiles({"x": ["batch", 1, 8, 8]}, [1], [entry])


def test_select_profile_prefers_an_exact_opt_then_the_first_range():
    profs = trtb.derive_profiles({"x": ["batch", 4]}, [8, 1, 64])
    assert trtb.select_profile(profs, {"x": [64, 4]}) == 2
    assert trtb.select_profile(profs, {"x": [1, 4]}) == 1
    assert trtb.select_profile(profs, {"x": [8, 4]}) == 0
    assert trtb.select_profile(profs, {"x": [5, 4]}) == 0
    with pytest.raises(ValueError, match="holds input shapes"):
        trtb.select_profile(profs, {"x": [65, 4]})


def test_build_options_from_a_real_spec(monkeypatch):
    monkeypatch.delenv("LATHE_TRT_TIMING_CACHE", raising=False)
    spec = ModelOptimizationSpec.model_validate({
        "model": {"uri": "/m.onnx", "format": "onnx"}, "task": {"type": "classification"},
        "data": {"validation": {"uri": "/v.npz"}},
        "target": {"device": "gpu", "runtimes": ["tensorrt"], "batchSizes": [1, 16]},
        "tensorrt": {"profiles": [{"input": "x", "min": [1, 1, 32, 32], "opt": [16, 1, 32, 32], "max": [64, 1, 32, 32]}],
                     "workspaceMib": 2048, "optimizationLevel": 5, "timingCache": "/cache/trt"}})
    ctx = SimpleNamespace(spec=spec, workdir=Path("/w/candidates/c/work"),
                          model=SimpleNamespace(inputs=[SimpleNamespace(name="x", shape=["batch", 1, 32, 32])]),
                          validation=SimpleNamespace(feeds={"x": np.zeros((10, 1, 32, 32), np.float32)}))
    opts = trtb.TensorRTBackend().build_options(ctx, None)
    assert opts["workspace_mib"] == 2048 and opts["optimization_level"] == 5 and opts["timing_cache_dir"] == "/cache/trt"
    ctx.spec = spec.model_copy(update={"tensorrt": None})
    assert trtb.TensorRTBackend().build_options(ctx, None)["timing_cache_dir"] == "/w/timing-cache"
    assert opts["batch_sizes"] == [1, 16] and opts["hints"] == {"x": [1, 1, 32, 32]}
    assert trtb.derive_profiles(opts["inputs"], opts["batch_sizes"], opts["profiles"], opts["hints"]) == [
        {"x": {"min": [1, 1, 32, 32], "opt": [16, 1, 32, 32], "max": [64, 1, 32, 32]}}]


# -------------------------------------------------------------------------------- parser errors
def test_parser_errors_are_reported_per_node():
    issues = [trtb.ParserIssue("UNSUPPORTED_NODE", "No importer registered for op: FooOp", 7, "foo_7", "FooOp"),
              trtb.ParserIssue("INVALID_NODE", "Assertion failed: axis in range", 12, "/gather/Gather", "Gather",
                               ["MyFunction"]),
              trtb.ParserIssue("MODEL_DESERIALIZE_FAILED", "protobuf parse failed")]
    msg = trtb.parser_report(issues)
    assert msg.startswith("TensorRT's ONNX parser rejected the model (3 error(s)): ")
    assert "node 7 (FooOp 'foo_7'): UNSUPPORTED_NODE: No importer registered for op: FooOp" in msg
    assert "node 12 (Gather '/gather/Gather') in local function(s) MyFunction: INVALID_NODE" in msg
    assert "model: MODEL_DESERIALIZE_FAILED: protobuf parse failed" in msg
    many = trtb.parser_report([trtb.ParserIssue("UNSUPPORTED_NODE", "x", i, f"n{i}", "Op") for i in range(11)], limit=8)
    assert many.endswith("; and 3 more") and "node 7 " in many and "node 8 " not in many


def test_timing_cache_is_keyed_by_version_and_compute_capability(tmp_path):
    a = trtb.timing_cache_path(tmp_path, "10.13.0.35", (8, 9))
    assert a == tmp_path / "trt-10.13.0.35-sm89.timing-cache"
    assert trtb.timing_cache_path(tmp_path, "10.13.0.35", (9, 0)) != a
    assert trtb.timing_cache_path(tmp_path, "10.13.2", (8, 9)) != a
    assert "/" not in trtb.timing_cache_path(tmp_path, "10.13/../x", (8, 9)).name


# --------------------------------------------------------------------------------- inspector JSON
@pytest.mark.parametrize("desc, want", [
    ("Row major linear FP32", "FP32"), ("Float", "FP32"), ("Row major linear FP32 format (kLINEAR)", "FP32"),
    ("Half", "FP16"), ("Channel major FP16 format where channel % 8 == 0", "FP16"),
    ("Thirty-two wide channel vectorized row major Int8 format", "INT8"), ("Row major Int8 format", "INT8"),
    ("Channel major INT8 format where channel % 16 == 0", "INT8"), ("Row major linear BFloat16 format", "BF16"),
    ("BFloat16", "BF16"), ("Row major linear FP8 format", "FP8"), ("Row major linear UInt8 format", "UINT8"),
    ("Row major linear Int64 format (kLINEAR)", "INT64"), ("Row major linear Int32", "INT32"),
    ("Row major linear BOOL", "BOOL"), ("Int4", "INT4"), ("Unknown format", "UNKNOWN"), (None, "UNKNOWN"),
])
def test_datatype_strings_of_both_versions(desc, want):
    assert trtb.datatype_of(desc) == want


def test_tensorrt10_json_int8_cnn():
    info = trtb.parse_engine_json((HERE / "trt10_int8_cnn.json").read_text())
    assert info.shape == "10" and info.detailed and info.profiles == 2
    assert [t["name"] for t in info.io_tensors] == ["x", "logits"]
    names = [layer.name for layer in info.layers]
    assert "/conv1/Conv + /relu1/Relu [profile 1]" not in names and len(names) == 6  # profile 0 only
    by = {layer.name: layer for layer in info.layers}
    assert by["/conv1/Conv + /relu1/Relu"].precision == "INT8" and by["/conv1/Conv + /relu1/Relu"].compute
    assert by["/fc/Gemm"].precision == "FP32" and by["/fc/Gemm"].compute
    assert not by["/pool1/MaxPool"].compute and not by[names[0]].compute  # pooling, reformat
    audit = trtb.precision_audit(info, "int8")
    assert audit["compute_layers"] == 3 and audit["compute_by_precision"] == {"INT8": 2, "FP32": 1}
    assert audit["higher_than_requested"] == ["/fc/Gemm"] and audit["reduced_share"] == pytest.approx(0.6667)
    assert audit["by_precision"] == {"INT8": 4, "FP32": 2}  # reformat, convs, pool; the quantize reads FP32
    assert trtb.reduced_precision_failure(audit) is None  # 2 of 3 reduced: the FP32 classifier is reported, not failed
    assert trtb.precision_audit(info, "fp16")["higher_than_requested"] == ["/fc/Gemm"]


def test_tensorrt11_json_fp16_that_mostly_did_not_reduce():
    info = trtb.parse_engine_json(json.loads((HERE / "trt11_fp16_minilm.json").read_text()))
    assert info.shape == "11" and info.detailed and info.profiles == 2
    io = {t["name"]: t for t in info.io_tensors}
    assert io["input_ids"]["mode"] == "input" and io["input_ids"]["dtype"] == "INT64"
    assert io["input_ids"]["profiles"][0] == {"min": [1, 128], "opt": [1, 128], "max": [32, 128]}
    assert io["embeddings"]["dtype"] == "FP32"
    audit = trtb.precision_audit(info, "fp16")
    assert audit["compute_layers"] == 5  # 4 gemm + the MHA kernel; casts and reductions are not compute
    assert audit["compute_by_precision"] == {"FP16": 2, "FP32": 3}
    assert sorted(audit["higher_than_requested"]) == sorted([
        "/encoder/layer.0/attention/self/key/MatMul_myl0_6", "/encoder/layer.0/intermediate/dense/MatMul_myl0_3",
        "/encoder/layer.0/output/dense/MatMul_myl0_4"])
    failure = trtb.reduced_precision_failure(audit)
    assert failure and failure.startswith("precision audit: the engine mostly did not reduce: 2 of 5 compute layer(s)")
    assert "(40% < 50%; FP16 2, FP32 3)" in failure and "/encoder/layer.0/output/dense/MatMul_myl0_4" in failure
    # the same engine for an FP32 candidate is fine, and a looser rule lets it through
    assert trtb.reduced_precision_failure(trtb.precision_audit(info, "fp32")) is None
    assert trtb.reduced_precision_failure(audit, min_share=0.4) is None


def test_loose_parsing_of_odd_documents():
    names_only = trtb.parse_engine_json({"Layers": ["conv1", "conv1 [profile 1]"], "Bindings": ["x"]})
    assert not names_only.detailed and names_only.profiles == 2 and [la.name for la in names_only.layers] == ["conv1"]
    failure = trtb.reduced_precision_failure(trtb.precision_audit(names_only, "int8"))
    assert failure and "ProfilingVerbosity.DETAILED" in failure
    bare = trtb.parse_engine_json('[{"Name": "mm", "LayerType": "MatrixMultiply", "Inputs": [{"DataType": "Half"}], "Extra": 1}]')
    assert bare.shape == "unknown" and bare.layers[0].precision == "FP16" and bare.layers[0].compute
    empty = trtb.parse_engine_json("{}")
    assert "no compute layer" in (trtb.reduced_precision_failure(
        {**trtb.precision_audit(empty, "int8"), "detailed": True}) or "")
    with pytest.raises(ValueError):
        trtb.parse_engine_json('"text"')


def test_audit_and_precision_read_the_saved_json(tmp_path):
    (tmp_path / "model.plan").write_bytes(b"not an engine")
    (tmp_path / trtb.LAYERS_FILE).write_text((HERE / "trt10_int8_cnn.json").read_text())
    (tmp_path / trtb.META_FILE).write_text(json.dumps({"requested_precision": "INT8"}))
    art = trtb.Artifact(runtime="tensorrt", files=[tmp_path / "model.plan"])
    be = trtb.TensorRTBackend()
    assert be.precision(art)["/fc/Gemm"] == "FP32"
    assert be.audit(art)["requested"] == "INT8" and be.audit(art)["failure"] is None


# ------------------------------------------------------------------------- what the graph asks for
def _graph(nodes, inits=(), out_type=TensorProto.FLOAT):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", out_type, ["n", 4])], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_requested_precision_from_qdq_and_casts(tmp_path):
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    cases = {
        "INT8": _graph([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])],
                       [scale, helper.make_tensor("zp", TensorProto.INT8, [], [0])]),
        "FP8": _graph([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                       helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])],
                      [scale, helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0])]),
        "FP16": _graph([helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                        helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]),
        "FP32": _graph([helper.make_node("Relu", ["x"], ["y"])]),
    }
    for want, model in cases.items():
        path = tmp_path / f"{want}.onnx"
        onnx.save(model, path)
        assert trtb.graph_precision(path) == want, want
    assert trtb.requested_precision({"DequantizeLinear": 3}, ["INT4"]) == "INT4"
    assert trtb.requested_precision({"Cast": 2}, cast_types=["BFLOAT16"]) == "BF16"


# --------------------------------------------------------------------------------- availability
def test_the_module_imports_without_tensorrt_and_says_why_it_cannot_run(monkeypatch):
    be = get_backend("tensorrt")
    assert isinstance(be, trtb.TensorRTBackend)
    reason = unavailable_reason("tensorrt")
    # in .venv there is no tensorrt at all (its stubs live outside site-packages): that is said
    assert reason.startswith("tensorrt is not installed in this worker"), reason
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # no package at all: ImportError
    assert trtb.TensorRTBackend.available().startswith("tensorrt is not installed in this worker (")
    # a stub-only `tensorrt` folder on the path (no bindings) is not taken for TensorRT either
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert "found only a package without the bindings" in trtb.TensorRTBackend.available()
    with pytest.raises(trtb.WorkerError, match="tensorrt is not installed"):
        be.build(Path("m.onnx"), Path("/nonexistent"), {})
