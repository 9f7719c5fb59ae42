"""The hand-over of one engine per architecture, through the real operator, API server and Jobs.

Pods run as local processes under the node agent (e2e/nodeagent/agent.py, which ignores selectors:
placement is tests/architectures/test_fanout_apiserver.py's subject). Each architecture's worker is
the stand-in tests/architectures/arch_worker.py, keeping PLACEHOLDER `.plan` files (not engines:
there is no TensorRT or GPU here); the publish Job is the real `python -m lathe.serving.architectures`.
What is shown: two build Jobs, the choice across architectures, one publish Job, one Triton version
whose config.pbtxt (parsed by Triton's ModelConfig protobuf) maps each compute capability to its
file. No engine was built, loaded or run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from kubernetes import client
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

from e2e.controlplane.fixture import free_port
from lathe.api.spec import GROUP, PLURAL, VERSION
from tests.architectures.conftest import operator_with
from tests.waiting import wait_for

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def operator(kubeconfig, node_agent):
    env = {"LATHE_METRICS_PORT": str(free_port()), "LATHE_WORKER_COMMAND": f"{sys.executable} {HERE / 'arch_worker.py'}",
           "LATHE_PUBLISH_COMMAND": f"{sys.executable} -m lathe.serving.architectures", "LATHE_MAX_ATTEMPTS": "1"}
    with operator_with(env) as op:
        yield op


def resource(tmp_path, name, script):
    (tmp_path / "script.json").write_text(json.dumps(script))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])
    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 10], [0.0] * 640)
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                                opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "graph.onnx")
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelOptimization", "metadata": {"name": name},
            "spec": {"model": {"uri": str(tmp_path / "script.json")},
                     "data": {"validation": {"uri": str(tmp_path / "val.npz")}},
                     "target": {"device": "gpu", "runtimes": ["tensorrt"],
                                "gpu": {"architectures": [{"computeCapability": "8.9"},
                                                          {"computeCapability": "10.0"}]}},
                     "artifacts": str(tmp_path / "artifacts"),
                     "publish": {"repository": str(tmp_path / "repo"), "modelName": "digits"}}}


def status_of(api, ns, name):
    return api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status") or {}


def wait_phase(api, ns, name, *phases, timeout=120):
    try:
        return wait_for(lambda: (s := status_of(api, ns, name)).get("phase") in phases and s, timeout=timeout,
                        what=f"{name} phase in {phases}")
    except AssertionError as e:
        raise AssertionError(f"{e}\nstatus: {json.dumps(status_of(api, ns, name), indent=1)}") from None


def test_the_candidate_passing_everywhere_is_published_with_one_engine_per_architecture(
        operator, k8s_client, namespace, tmp_path):
    api, batch = client.CustomObjectsApi(k8s_client), client.BatchV1Api(k8s_client)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource(tmp_path, "handover", {
        "8.9": {"fp16": ["passed", 1.9], "int8": ["passed", 3.0]},
        "10.0": {"fp16": ["passed", 1.6], "int8": ["passed", 1.1]}}))
    st = wait_phase(api, namespace, "handover", "Succeeded", "Failed", "Rejected")
    assert st["phase"] == "Succeeded", st
    assert st["winner"] == "fp16" and "best worst-case speedup, 1.60x on 10.0" in st["selection"]
    assert [(a["computeCapability"], a["phase"], a["winner"]) for a in st["architectures"]] == [
        ("8.9", "Succeeded", "int8"), ("10.0", "Succeeded", "fp16")]
    assert st["published"]["version"] == 1 and st["published"]["candidate"] == "fp16"
    names = sorted(j.metadata.name for j in batch.list_namespaced_job(namespace).items)
    assert names == ["handover-g1-a1-publish", "handover-g1-a1-sm100", "handover-g1-a1-sm89"]
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse((tmp_path / "repo/digits/config.pbtxt").read_text(), cfg)
    assert cfg.platform == "tensorrt_plan"
    assert dict(cfg.cc_model_filenames) == {"8.9": "model_sm89.plan", "10.0": "model_sm100.plan"}
    v1 = tmp_path / "repo/digits/1"
    assert (v1 / "model_sm100.plan").read_bytes() == b"PLACEHOLDER engine of fp16 for 10.0"
    assert (v1 / "model_sm89.plan").read_bytes() == b"PLACEHOLDER engine of fp16 for 8.9"


def test_no_candidate_passing_everywhere_publishes_nothing(operator, k8s_client, namespace, tmp_path):
    api, batch = client.CustomObjectsApi(k8s_client), client.BatchV1Api(k8s_client)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource(tmp_path, "split", {
        "8.9": {"fp16": ["passed", 1.9], "int8": ["rejected", 3.0]},
        "10.0": {"fp16": ["rejected", 0.8], "int8": ["passed", 1.5]}}))
    st = wait_phase(api, namespace, "split", "Succeeded", "Failed", "Rejected")
    assert st["phase"] == "Rejected" and "no candidate passed on every architecture" in st["selection"], st
    assert "published" not in st and not (tmp_path / "repo").exists()
    assert sorted(j.metadata.name for j in batch.list_namespaced_job(namespace).items) == [
        "split-g1-a1-sm100", "split-g1-a1-sm89"]
