"""One build Job per GPU architecture, through the real operator on the real API server.

Components, all real: etcd + kube-apiserver + kube-controller-manager (tests/conftest.py's control
plane), the operator (kopf, in-process, as tests/operator runs it), and kube-scheduler (started
here) with one registered CPU-only Node: no node offers nvidia.com/gpu or GPU feature discovery's
labels, so each architecture's worker pod stays Pending with the scheduler's own message. No worker
runs and no engine is built. The Node is an API object only (no kubelet behind it): the scheduler
places pods by the Node's labels and capacity, which is what this test is about.

Run this folder in its own pytest session, or before tests/operator: the node agent those tests
start binds every pod to itself, ignoring selectors (e2e/nodeagent/agent.py); the fixture below
fails, saying so, when it finds one."""

from __future__ import annotations

import json
import sys

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.controlplane.fixture import free_port
from lathe.api.spec import GROUP, PLURAL, VERSION
from tests.architectures.conftest import operator_with
from tests.waiting import wait_for

NODE = "cpu-only-1"


@pytest.fixture(scope="module")
def cpu_node(k8s_client):
    core = client.CoreV1Api(k8s_client)
    agents = core.list_node(label_selector="node.lathe.dev/agent").items
    if agents:
        pytest.fail(f"a node agent ({agents[0].metadata.name}) binds every pod ignoring selectors: run "
                    "tests/architectures in its own pytest session", pytrace=False)
    core.create_node({"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
                      "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                                 "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                                 "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                                 "message": "ready"}]}})
    try:
        yield NODE
    finally:
        core.delete_node(NODE)


@pytest.fixture(scope="module")
def operator(kubeconfig, scheduler, cpu_node):
    env = {"LATHE_METRICS_PORT": str(free_port()), "LATHE_WORKER_COMMAND": f"{sys.executable} -c pass"}
    with operator_with(env) as op:
        yield op


def body(tmp_path, name, architectures):
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelOptimization", "metadata": {"name": name},
            "spec": {"model": {"uri": str(tmp_path / "model.onnx")},
                     "data": {"validation": {"uri": str(tmp_path / "val.npz")}},
                     "target": {"device": "gpu", "runtimes": ["tensorrt"],
                                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                                 "effect": "NoSchedule"}],
                                "gpu": {"architectures": architectures}},
                     "artifacts": str(tmp_path / "artifacts"),
                     "publish": {"repository": str(tmp_path / "repo"), "modelName": "digits"}}}


def test_two_architectures_make_two_pending_jobs_named_in_status(operator, k8s_client, namespace, tmp_path):
    api, batch = client.CustomObjectsApi(k8s_client), client.BatchV1Api(k8s_client)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body(tmp_path, "two-gpus", [
        {"computeCapability": "8.9", "product": "NVIDIA-L4"},
        {"computeCapability": "9.0", "nodeSelector": {"pool": "h200"}}]))

    def status():
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "two-gpus").get("status") or {}

    try:
        st = wait_for(lambda: (s := status()) and [a.get("phase") for a in s.get("architectures", [])]
                      == ["Unschedulable", "Unschedulable"] and s, timeout=90, what="both architectures unschedulable")
    except AssertionError as e:
        raise AssertionError(f"{e}\nstatus: {json.dumps(status(), indent=1)}") from None
    jobs = sorted(batch.list_namespaced_job(namespace, label_selector=f"{GROUP}/name=two-gpus").items,
                  key=lambda j: j.metadata.name)
    assert [j.metadata.name for j in jobs] == ["two-gpus-g1-a1-sm89", "two-gpus-g1-a1-sm90"]
    expected = {"8.9": {"nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "9",
                        "nvidia.com/gpu.product": "NVIDIA-L4"},
                "9.0": {"nvidia.com/gpu.compute.major": "9", "nvidia.com/gpu.compute.minor": "0", "pool": "h200"}}
    for j in jobs:
        cc = j.metadata.labels[f"{GROUP}/architecture"]
        pod = j.spec.template.spec
        assert pod.node_selector == expected[cc]
        assert [(t.key, t.effect) for t in pod.tolerations] == [("dedicated", "NoSchedule"),
                                                                ("nvidia.com/gpu", "NoSchedule")]
        env = {e.name: e.value for e in pod.containers[0].env}
        assert env["LATHE_GPU_ARCH"] == cc
        assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    pods = client.CoreV1Api(k8s_client).list_namespaced_pod(namespace).items
    assert len(pods) == 2 and all(p.status.phase == "Pending" and not p.spec.node_name for p in pods)

    assert st["phase"] == "Pending" and st["stage"] == "scheduling"
    by_cc = {a["computeCapability"]: a for a in st["architectures"]}
    assert by_cc["8.9"]["job"] == "two-gpus-g1-a1-sm89" and by_cc["9.0"]["job"] == "two-gpus-g1-a1-sm90"
    cond = next(c for c in st["conditions"] if c["type"] == "Scheduled")
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
    for cc in ("8.9", "9.0"):
        part = next(p for p in cond["message"].split("; architecture ") if p.removeprefix("architecture ").startswith(cc))
        assert "nvidia.com/gpu" in part and "0/1 nodes are available" in part, cond["message"]  # the scheduler's words
    assert "publish" not in json.dumps(st.get("publishJob") or {})
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "two-gpus")
    wait_for(lambda: not batch.list_namespaced_job(namespace, label_selector=f"{GROUP}/name=two-gpus").items,
             timeout=60, what="Jobs deleted with the resource")


def test_the_api_server_refuses_a_compute_capability_named_twice(k8s_client, namespace, tmp_path):
    api = client.CustomObjectsApi(k8s_client)
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body(tmp_path, "twice", [
            {"computeCapability": "8.9"}, {"computeCapability": "8.9", "product": "NVIDIA-L40S"}]))
    assert err.value.status == 422
    assert "Duplicate value" in err.value.body and "computeCapability" in err.value.body, err.value.body
    with pytest.raises(ApiException) as bad:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body(tmp_path, "bad-cc", [
            {"computeCapability": "sm89"}]))
    assert bad.value.status == 422 and "computeCapability" in bad.value.body
    ok = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body(tmp_path, "valid", [
        {"computeCapability": "8.0"}, {"computeCapability": "10.0"}]))
    assert [a["computeCapability"] for a in ok["spec"]["target"]["gpu"]["architectures"]] == ["8.0", "10.0"]
