"""One TensorRT engine per GPU architecture, published as one version (lathe.serving.architectures).

No engine can be built here (no TensorRT, no GPU): the `.plan` files below are PLACEHOLDER bytes.
These tests are about the hand-over's file layout and the config.pbtxt Triton would load; none of
them claims an engine was built, loaded or run. The config is parsed by Triton's own ModelConfig
protobuf (tritonclient.grpc.model_config_pb2) with google.protobuf.text_format."""

from __future__ import annotations

import json
import os

import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

from lathe.api.spec import ModelOptimizationSpec
from lathe.serving.architectures import assemble, keep_engine, main, publish_architectures
from lathe.serving.repository import PublishError

RESOURCE, GEN = "ml/digits", 3


def graph(path, width=10):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])
    w = helper.make_tensor("w", TensorProto.FLOAT, [64, width], [0.0] * (64 * width))
    m = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, path)
    return path


def make_spec(tmp_path, *ccs):
    return ModelOptimizationSpec.model_validate({
        "model": {"uri": "m.onnx"}, "data": {"validation": {"uri": "v.npz"}},
        "target": {"device": "gpu", "runtimes": ["tensorrt"],
                   "gpu": {"architectures": [{"computeCapability": cc} for cc in ccs]}},
        "artifacts": str(tmp_path / "artifacts"),
        "publish": {"repository": str(tmp_path / "repo"), "modelName": "digits"},
    })


def keep_placeholders(tmp_path, spec, candidate, ccs):
    src = graph(tmp_path / "fp16.onnx")
    for cc in ccs:
        plan = tmp_path / f"placeholder-{cc}.plan"
        plan.write_bytes(f"PLACEHOLDER, not an engine: {cc}".encode())
        keep_engine(spec, RESOURCE, GEN, cc, candidate, plan, src)


def test_two_engines_become_one_version_with_cc_model_filenames(tmp_path):
    spec = make_spec(tmp_path, "8.9", "10.0")
    keep_placeholders(tmp_path, spec, "fp16", ["8.9", "10.0"])
    kept = tmp_path / "artifacts/ml/digits/generation-3"
    assert sorted(os.listdir(kept)) == ["sm100", "sm89"]
    assert sorted(os.listdir(kept / "sm89/fp16")) == ["lathe-arch.json", "model.plan", "source.onnx"]

    pub = publish_architectures(spec, RESOURCE, GEN, "fp16")
    assert (pub.version, pub.flavour, pub.candidate) == (1, "tensorrt", "fp16")
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse((tmp_path / "repo/digits/config.pbtxt").read_text(), cfg)
    assert cfg.platform == "tensorrt_plan"
    assert dict(cfg.cc_model_filenames) == {"8.9": "model_sm89.plan", "10.0": "model_sm100.plan"}
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert [i.name for i in cfg.input] == ["x"] and list(cfg.output[0].dims) == [10]
    version = tmp_path / "repo/digits/1"
    assert sorted(os.listdir(version)) == ["lathe.json", "model_sm100.plan", "model_sm89.plan", "source.onnx"]
    assert (version / "model_sm100.plan").read_bytes() == b"PLACEHOLDER, not an engine: 10.0"


def test_publish_refuses_when_one_architecture_is_missing(tmp_path):
    spec = make_spec(tmp_path, "8.9", "9.0")
    keep_placeholders(tmp_path, spec, "fp16", ["8.9"])  # 9.0 kept nothing
    with pytest.raises(PublishError, match=r"no engine for architecture 9\.0"):
        publish_architectures(spec, RESOURCE, GEN, "fp16")
    assert not (tmp_path / "repo/digits").exists()  # nothing half-published


def test_publish_refuses_graphs_with_different_signatures(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, width in ((a, 10), (b, 12)):
        d.mkdir()
        (d / "model.plan").write_bytes(b"PLACEHOLDER")
        graph(d / "source.onnx", width)
    with pytest.raises(PublishError, match="differ in inputs/outputs"):
        assemble({"8.9": a, "9.0": b})


def test_the_publish_job_entrypoint_reports_through_the_termination_log(tmp_path, monkeypatch):
    spec = make_spec(tmp_path, "8.6", "9.0")
    keep_placeholders(tmp_path, spec, "int8", ["8.6", "9.0"])
    term = tmp_path / "termination-log"
    monkeypatch.setenv("LATHE_SPEC", spec.model_dump_json(by_alias=True, exclude_none=True))
    monkeypatch.setenv("LATHE_RESOURCE", RESOURCE)
    monkeypatch.setenv("LATHE_GENERATION", str(GEN))
    monkeypatch.setenv("LATHE_PUBLISH_CANDIDATE", "int8")
    assert main(["--workdir", str(tmp_path), "--termination-log", str(term)]) == 0
    doc = json.loads(term.read_text())
    assert doc["published"]["version"] == 1 and doc["published"]["modelName"] == "digits"
    monkeypatch.setenv("LATHE_PUBLISH_CANDIDATE", "fp16")  # never kept: refused as bad input, not retried
    assert main(["--termination-log", str(term)]) == 2
    assert "no engine for architecture 8.6, 9.0" in json.loads(term.read_text())["error"]
