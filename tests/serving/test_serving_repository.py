"""Model repository writer: config generation per flavour checked against Triton's real ModelConfig schema,
atomic never-overwriting publication, sha256 + report beside each version. No server needed."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from lathe.api.spec import Publish
from lathe.serving import ConfigError, PublishError, check_config, onnx_signature, publish, verify, versions
from lathe.serving.config import (
    FLAVOURS,
    ConfigOptions,
    Flavour,
    config_versions,
    parse_config,
    register_flavour,
    render_config,
    set_version_policy,
)
from lathe.serving.repository import rename_noreplace, resolve_repository
from lathe.storage.paths import PathRefused


def spec(repo, **kw):
    return Publish(repository=str(repo), model_name="digits", **kw)


def test_signature_read_from_model(digits_models):
    sig = onnx_signature(digits_models["int8"])
    assert [(t.name, t.data_type, t.dims) for t in sig.inputs] == [("input", "TYPE_FP32", (-1, 64))]
    assert [(t.name, t.data_type, t.dims) for t in sig.outputs] == [("logits", "TYPE_FP32", (-1, 10))]


@pytest.mark.parametrize("flavour,platform,backend", [("onnxruntime", "onnxruntime_onnx", ""),
                                                      ("python", "", "python")])
def test_config_per_flavour_parses_into_triton_schema(tmp_path, digits_models, flavour, platform, backend):
    p = publish(tmp_path / "repo", "digits", [digits_models["int8"]], "onnxruntime",
                spec(tmp_path, flavour=flavour, max_batch_size=16, instances=2), "int8-dynamic")
    text = (tmp_path / "repo/digits/config.pbtxt").read_text()
    cfg = check_config(text, name="digits")
    assert (cfg.platform, cfg.backend) == (platform, backend)
    assert cfg.max_batch_size == 16
    assert list(cfg.input[0].dims) == [64] and list(cfg.output[0].dims) == [10]  # batch dim dropped
    assert cfg.HasField("dynamic_batching")
    assert cfg.instance_group[0].count == 2 and cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
    assert list(cfg.version_policy.specific.versions) == [1]
    assert p.version == 1 and p.flavour == flavour
    files = sorted(os.listdir(tmp_path / "repo/digits/1"))
    assert "model.onnx" in files and "lathe.json" in files and ("model.py" in files) == (flavour == "python")


def test_no_batching_keeps_full_dims_and_drops_dynamic_batching(tmp_path, digits_models):
    publish(tmp_path / "r", "digits", [digits_models["fp32"]], "onnxruntime",
            spec(tmp_path, flavour="onnxruntime", max_batch_size=0), "c")
    cfg = check_config((tmp_path / "r/digits/config.pbtxt").read_text())
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [-1, 64] and not cfg.HasField("dynamic_batching")


def test_fixed_leading_dim_disables_batching(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", 8])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [1])
    m = helper.make_model(helper.make_graph([helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)],
                                            "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, tmp_path / "m.onnx")
    publish(tmp_path / "r", "fixed", [tmp_path / "m.onnx"], "onnxruntime", spec(tmp_path, flavour="onnxruntime"), "c")
    cfg = check_config((tmp_path / "r/fixed/config.pbtxt").read_text(), name="fixed")
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 3, -1, 8]
    from tritonclient.grpc import model_config_pb2
    assert cfg.output[0].data_type == model_config_pb2.TYPE_INT64


def test_tensorrt_cc_model_filenames(tmp_path, digits_models):
    a = tmp_path / "model_sm80.plan"
    b = tmp_path / "model_sm90.plan"
    a.write_bytes(b"engine-a")
    b.write_bytes(b"engine-b")
    p = publish(tmp_path / "r", "digits", {"model_sm80.plan": a, "model_sm90.plan": b,
                                           "model.onnx": digits_models["fp32"]},
                "tensorrt", spec(tmp_path), "fp16-trt")
    assert p.flavour == "tensorrt"
    cfg = check_config((tmp_path / "r/digits/config.pbtxt").read_text(), name="digits")
    assert cfg.platform == "tensorrt_plan"
    assert dict(cfg.cc_model_filenames) == {"8.0": "model_sm80.plan", "9.0": "model_sm90.plan"}
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert sorted(os.listdir(tmp_path / "r/digits/1")) == ["lathe.json", "model_sm80.plan", "model_sm90.plan",
                                                           "source.onnx"]


def test_tensorrt_single_engine(tmp_path, digits_models):
    (tmp_path / "e.plan").write_bytes(b"x")
    publish(tmp_path / "r", "m", [tmp_path / "e.plan", digits_models["fp32"]], "tensorrt", spec(tmp_path), "t")
    cfg = check_config((tmp_path / "r/m/config.pbtxt").read_text(), name="m")
    assert not cfg.cc_model_filenames and (tmp_path / "r/m/1/model.plan").exists()


def test_schema_check_rejects_bad_configs():
    with pytest.raises(ConfigError, match="schema"):
        parse_config('name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: "eight"\n')
    with pytest.raises(ConfigError, match="schema"):
        parse_config('name: "m"\nno_such_field: 1\n')
    with pytest.raises(ConfigError, match="dynamic_batching"):
        check_config('name: "m" backend: "python" max_batch_size: 0 dynamic_batching {} '
                     'input { name: "x" data_type: TYPE_FP32 dims: [4] } '
                     'output { name: "y" data_type: TYPE_FP32 dims: [4] }')


def test_openvino_hook(tmp_path, digits_models, monkeypatch):
    """Another engineer's flavour plugs in through register_flavour(); the real one is back after."""
    from lathe.serving.config import Signature, TensorSig
    from lathe.serving.openvino_flavour import OpenVINOFlavour

    real = FLAVOURS["openvino"]
    assert type(real) is OpenVINOFlavour  # registered by importing lathe.serving

    class OpenVINO(Flavour):
        name = "openvino"

        def files(self, artifacts):
            return {"model.xml": artifacts["model.xml"], "model.bin": artifacts["model.bin"]}

        def signature(self, artifacts, files):
            return Signature((TensorSig("input", "TYPE_FP32", (-1, 64)),), (TensorSig("logits", "TYPE_FP32", (-1, 10)),))

        def config(self, model_name, sig, opts, files):
            return render_config(model_name, sig, opts, backend="openvino")

    (tmp_path / "model.xml").write_text("<net/>")
    (tmp_path / "model.bin").write_bytes(b"\0")
    with monkeypatch.context() as m:
        m.setitem(FLAVOURS, "openvino", real)  # restored on leaving the block, whatever happens in it
        register_flavour(OpenVINO())
        assert type(FLAVOURS["openvino"]) is OpenVINO
        p = publish(tmp_path / "r", "ov", [tmp_path / "model.xml", tmp_path / "model.bin"], "openvino",
                    spec(tmp_path), "ov-int8")  # flavour auto + runtime openvino
        assert p.flavour == "openvino"
        assert check_config((tmp_path / "r/ov/config.pbtxt").read_text()).backend == "openvino"
    assert FLAVOURS["openvino"] is real


def test_publish_versions_sha_report_and_policy(tmp_path, digits_models):
    repo = tmp_path / "repo"
    rep = tmp_path / "report.json"
    rep.write_text(json.dumps({"top1": 0.91}))
    p1 = publish(repo, "digits", [digits_models["fp32"]], "onnxruntime", spec(repo, flavour="python"), "baseline")
    p2 = publish(repo, "digits", [digits_models["int8"]], "onnxruntime", spec(repo, flavour="python"), "int8", rep)
    assert (p1.version, p2.version) == (1, 2)
    meta = json.loads((repo / "digits/2/lathe.json").read_text())
    assert meta["candidate"] == "int8" and meta["sha256"] == p2.sha256 and len(p2.sha256) == 64
    assert json.loads((repo / "digits/2/report.json").read_text()) == {"top1": 0.91}
    assert verify(repo / "digits", 2)
    # publishing does not change what is served: the policy still lists version 1 only
    assert config_versions((repo / "digits/config.pbtxt").read_text()) == [1]
    # same candidate + sha again -> the existing version, not a duplicate
    again = publish(repo, "digits", [digits_models["int8"]], "onnxruntime", spec(repo, flavour="python"), "int8")
    assert again.version == 2
    # never overwrite; next = max + 1 even with holes
    os.rename(repo / "digits/2", repo / "digits/7")
    p3 = publish(repo, "digits", [digits_models["int8"]], "onnxruntime", spec(repo, flavour="python"), "int8-b")
    assert p3.version == 8 and versions(repo / "digits") == [1, 7, 8]
    # nothing staged is left behind, inside or beside the repository
    assert not [n for n in os.listdir(repo / "digits") if n.startswith(".")]
    assert not list((tmp_path / ".lathe-staging").iterdir())
    (repo / "digits/8/model.onnx").write_bytes(b"corrupt")
    assert not verify(repo / "digits", 8)


def test_incompatible_signature_is_refused(tmp_path, digits_models):
    from tests.serving.models import mlp_to_onnx, train_mlp

    repo = tmp_path / "r"
    publish(repo, "digits", [digits_models["fp32"]], "onnxruntime", spec(repo, flavour="python"), "a")
    with pytest.raises(PublishError, match="signature"):
        publish(repo, "digits", [digits_models["fp32"]], "onnxruntime", spec(repo, flavour="onnxruntime"), "b")
    assert versions(repo / "digits") == [1]
    del mlp_to_onnx, train_mlp


def test_concurrent_publishers_never_clobber(tmp_path, digits_models):
    repo = tmp_path / "repo"
    results, errors = [], []

    def go(i):
        try:
            results.append(publish(repo, "digits", [digits_models["int8"]], "onnxruntime",
                                   spec(repo, flavour="python"), f"cand-{i}"))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert sorted(r.version for r in results) == list(range(1, 9))
    for r in results:  # each version holds the candidate that claimed it
        assert json.loads((repo / "digits" / str(r.version) / "lathe.json").read_text())["candidate"] == r.candidate
    check_config((repo / "digits/config.pbtxt").read_text(), name="digits")


def test_rename_noreplace_refuses_empty_target(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/f").write_text("x")
    (tmp_path / "b").mkdir()  # empty dir: plain rename(2) would replace it
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a/f").exists()


def test_pvc_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("LATHE_PVC_ROOT", str(tmp_path))
    assert resolve_repository("pvc://models/triton/repo") == tmp_path / "models/triton/repo"
    with pytest.raises(PathRefused, match="'..' segment"):
        resolve_repository("pvc://claim/../etc")
    # a folder inside the claim that is a symlink out of it: refused once resolved
    (tmp_path / "claim").mkdir()
    (tmp_path / "claim" / "repo").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PathRefused, match="outside"):
        resolve_repository("pvc://claim/repo")
    with pytest.raises(PublishError):
        resolve_repository("s3://bucket/x")


def test_set_version_policy_roundtrip():
    text = render_config("m", onnx_signature_stub(), ConfigOptions(versions=[1]), backend="python")
    assert config_versions(set_version_policy(text, [3, 2])) == [2, 3]


def onnx_signature_stub():
    from lathe.serving.config import Signature, TensorSig

    return Signature((TensorSig("x", "TYPE_FP32", (-1, 4)),), (TensorSig("y", "TYPE_FP32", (-1, 3)),))


def test_missing_artifact(tmp_path):
    with pytest.raises(PublishError, match="not found"):
        publish(tmp_path, "m", [tmp_path / "nope.onnx"], "onnxruntime", None, "c")
    assert not Path(tmp_path / "m").exists()


def _matmul_model(path: Path, width: int, declared: int | str) -> Path:
    """x[batch, 4] @ W[4, width]; the output's width declared as a number or left open (a dim_param)."""
    import numpy as np

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, width], np.ones(4 * width, dtype=np.float32))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", declared])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_open_dim_and_a_known_one_are_the_same_signature(tmp_path):
    # One exporter leaves the embedding width open, the quantizer's shape inference knows it (384 in
    # MiniLM): both must publish as versions of one model, under a config that admits both.
    repo = tmp_path / "r"
    known = _matmul_model(tmp_path / "known.onnx", 3, 3)
    open_ = _matmul_model(tmp_path / "open.onnx", 3, "width")
    publish(repo, "m", [known], "onnxruntime", spec(repo, flavour="python"), "a")
    publish(repo, "m", [open_], "onnxruntime", spec(repo, flavour="python"), "b")
    cfg = parse_config((repo / "m" / "config.pbtxt").read_text())
    assert versions(repo / "m") == [1, 2] and list(cfg.output[0].dims) == [-1]
    # and the other way round: the open dim stays open when a version that knows it follows
    publish(repo, "n", [open_], "onnxruntime", spec(repo, flavour="python"), "a")
    publish(repo, "n", [known], "onnxruntime", spec(repo, flavour="python"), "b")
    assert list(parse_config((repo / "n" / "config.pbtxt").read_text()).output[0].dims) == [-1]
    # two known, different widths are a different model
    publish(repo, "m2", [known], "onnxruntime", spec(repo, flavour="python"), "a")
    wide = _matmul_model(tmp_path / "wide.onnx", 5, 5)
    with pytest.raises(PublishError, match="signature"):
        publish(repo, "m2", [wide], "onnxruntime", spec(repo, flavour="python"), "b")
    assert versions(repo / "m2") == [1]
