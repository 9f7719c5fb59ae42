"""The chain with everything on a real S3 server (versitygw): model, calibration and validation data read
from s3://, the winner published into a Triton repository on s3://, the reports kept under an s3://
artifacts prefix, credentials from a Secret named by spec.storage.s3.secretRef (handed to the worker pod
by secretKeyRef). The real Triton serves that repository straight from S3, and the operator rolls
version 2 out as a canary under live traffic there (config.pbtxt and the router model written on S3
with the operator's own copy of the credentials). And each way a store can fail, through the operator:
its own reason in status, no retry, no secret value anywhere.

What is not real here: the node. The worker pods run under the node agent (e2e/nodeagent/agent.py), which
plays the kubelet: a pod's command is a local process from this checkout's .venv (no image, container,
securityContext or resource limits), its claims are local folders, its Secret values reach it as the agent
reads them. The API server, the operator process, the worker's code, ONNX Runtime, torch, Triton and the S3
server are the real ones. It needs no scripted worker and could move to the real node (tests/cluster) with an
S3 server on the node's bridge; it moves with the other object-store chains (issue 21, docs/testing.md)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from kubernetes import client

from e2e.controlplane.fixture import free_port
from e2e.triton.server import TritonServer
from tests.e2e.chain import BIN, GENERATION_2, Cluster, Load, Operator
from tests.waiting import wait_for

DONE = ("Succeeded", "Failed", "Rejected", "RolledBack")


@pytest.fixture(scope="module")
def s3e2e(control_plane, k8s_client, node_agent, s3_server, tmp_path_factory):
    from lathe.worker.samples import make_digits

    ns = f"s3-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(k8s_client)
    core.create_namespace({"metadata": {"name": ns}})
    bucket = s3_server.make_bucket(f"lathe-e2e-{uuid.uuid4().hex[:8]}")
    work = tmp_path_factory.mktemp("s3e2e")
    sample = make_digits(work / "digits")
    s3 = s3_server.client()
    for role in ("model", "calibration", "validation"):
        s3.upload(bucket, f"models/{Path(sample[role]).name}", Path(sample[role]))

    def secret(name: str, **data: str) -> None:
        core.create_namespaced_secret(ns, {"metadata": {"name": name}, "type": "Opaque",
                                           "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    secret("s3-creds", AWS_ACCESS_KEY_ID=s3_server.access_key, AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
           AWS_REGION=s3_server.region)
    secret("s3-wrong", AWS_ACCESS_KEY_ID=s3_server.access_key, AWS_SECRET_ACCESS_KEY="wrong-secret-value-1234")
    secret("s3-half", AWS_ACCESS_KEY_ID=s3_server.access_key)
    env = dict(os.environ, KUBECONFIG=str(control_plane.kubeconfig), LATHE_WORKER_COMMAND=f"{BIN / 'lathe'} worker",
               LATHE_METRICS_PORT=str(free_port()), LATHE_ROLLOUT_INTERVAL="1",
               LATHE_MAX_ATTEMPTS="2",  # a failure taken for a crash would show as a second attempt
               LATHE_BENCH_SECONDS="4")
    creds = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")
    assert not [k for k in creds if k in env], "the worker must get its credentials from the Secret alone"
    op = Operator(env, ns, work / "operator.log")
    # Triton only starts on a prefix that exists (else "repository path is not a valid directory").
    s3.put_bytes(bucket, "triton/.keep", b"")
    triton = TritonServer(f"s3://{s3_server.host}:{s3_server.port}/{bucket}/triton", workdir=work / "triton",
                          env={"AWS_ACCESS_KEY_ID": s3_server.access_key,
                               "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                               "AWS_DEFAULT_REGION": s3_server.region}, start_timeout=90)
    with contextlib.ExitStack() as stack:
        stack.callback(triton.stop)
        stack.callback(lambda: print("operator log tail:\n" + (work / "operator.log").read_text()[-4000:])
                       if (work / "operator.log").exists() else None)
        stack.callback(op.stop)
        triton.start()
        op.start()
        yield {"ns": ns, "k": Cluster(k8s_client, control_plane.kubeconfig, ns), "bucket": bucket, "s3": s3,
               "server": s3_server, "sample": sample, "work": work, "log": work / "operator.log",
               "batch": client.BatchV1Api(k8s_client), "core": core, "triton": triton}


def resource(name: str, e: dict, *, model: str | None = None, secret: str = "s3-creds",
             endpoint: str | None = None, publish: bool = False, candidates: list | None = None) -> dict:
    b = e["bucket"]
    spec = {
        "model": {"uri": model or f"s3://{b}/models/digits_cnn.pt", "format": "torchscript",
                  "inputs": [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]},
        "data": {"calibration": {"uri": f"s3://{b}/models/digits_calibration.npz"},
                 "validation": {"uri": f"s3://{b}/models/digits_validation.npz"}},
        "target": {"runtimes": ["onnxruntime"], "batchSizes": [1]},
        "candidates": candidates or [{"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8",
                                                                         "mode": "static"}]}],
        "budget": {"maxAccuracyDrop": 0.02, "minSpeedup": 0.0},  # the storage path is under test, not speed
        "storage": {"s3": {"secretRef": secret, "endpoint": endpoint or e["server"].endpoint}},
    }
    if publish:
        t = e["triton"]
        spec["publish"] = {"repository": f"s3://{b}/triton", "modelName": "digits", "flavour": "python",
                           "tritonUrl": t.http_url, "metricsUrl": t.metrics_url,
                           "rollout": {"steps": [{"weight": 30, "pauseSeconds": 3, "minRequests": 10, "mirror": 50},
                                                 {"weight": 100, "pauseSeconds": 0, "minRequests": 0}],
                                       "analysis": {"maxErrorRate": 0.0, "maxLatencyRatio": 50.0,  # storage under test
                                                    "minComparedRequests": 10}}}
        spec["artifacts"] = f"s3://{b}/reports"
    return {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": name},
            "spec": spec}


def test_model_data_repository_and_reports_on_s3(s3e2e):
    e, k, s3, b = s3e2e, s3e2e["k"], s3e2e["s3"], s3e2e["bucket"]
    k.apply(resource("s3-digits", e, publish=True))
    st = k.wait("s3-digits", lambda s: s.get("phase") in DONE, 600, "s3-digits done")
    assert st["phase"] == "Succeeded", (st.get("message"), st.get("conditions"))
    pub = st["published"]
    assert pub["version"] == 1 and pub["repository"] == f"s3://{b}/triton"
    keys = {o.key for o in s3.list(b, "triton/")[0]}
    assert {"triton/digits/config.pbtxt", "triton/digits/1/model.onnx", "triton/digits/1/model.py",
            "triton/digits/1/lathe.json", "triton/digits/1/report.json"} <= keys, sorted(keys)
    assert not [k_ for k_ in keys if ".lathe-" in k_]
    prefix = f"reports/{e['ns']}/s3-digits/generation-1"
    assert {f"{prefix}/result.json", f"{prefix}/report.html"} <= {o.key for o in s3.list(b, "reports/")[0]}
    assert f"s3://{b}/{prefix}/report.html" in st["reportCopies"]
    kept = json.loads(s3.get_bytes(b, f"{prefix}/result.json"))
    assert kept["winner"] == st["winner"] and kept["published"]["version"] == 1

    assert st["rollout"]["state"] == "Promoted" and st["rollout"]["stableVersion"] == 1, st["rollout"]

    # The real Triton serves version 1 from the S3 repository, with the accuracy the worker measured.
    import tritonclient.http as http

    c = http.InferenceServerClient(e["triton"].http_url)
    data = np.load(e["sample"]["validation"])
    x, y = data["input"].astype(np.float32), data["labels"]
    name = c.get_model_metadata("digits")["outputs"][0]["name"]
    outs = []
    for i in range(0, len(x), 8):
        inp = http.InferInput("input", list(x[i:i + 8].shape), "FP32")
        inp.set_data_from_numpy(x[i:i + 8])
        outs.append(c.infer("digits", [inp]).as_numpy(name))
    win = next(cand for cand in st["candidates"] if cand["name"] == st["winner"])
    assert float((np.concatenate(outs).argmax(1) == y).mean()) == pytest.approx(win["accuracy"], abs=1e-5)

    # Generation 2: version 2 published beside it on S3 and rolled out as a canary under live traffic.
    load = Load(e["triton"].http_url, "digits_router", x)
    load.start()
    try:
        wait_for(lambda: load.ok > 0, 30, interval=0.2, what="traffic through the router")
        k.apply(resource("s3-digits", e, publish=True, candidates=GENERATION_2))
        st = k.wait("s3-digits", lambda s: s.get("observedGeneration") == 2 and s.get("phase") in DONE, 600,
                    "generation 2 decided")
    finally:
        load.stop.set()
        load.join(10)
    assert st["phase"] == "Succeeded", (st.get("message"), st.get("rollout"))
    ro = st["rollout"]
    assert ro["state"] == "Promoted" and ro["stableVersion"] == 2, ro
    passed = [h for h in ro["history"] if h["decision"] == "Passed"]
    assert passed and passed[0]["weight"] == 30 and passed[0]["requests"]["2"] >= 10, ro["history"]
    assert load.failed == 0 and load.ok > 0, load.errors[:5]
    assert c.is_model_ready("digits", "2") and not c.is_model_ready("digits", "1")
    from lathe.serving.config import config_versions

    assert config_versions(s3.get_bytes(b, "triton/digits/config.pbtxt").decode()) == [2]
    assert "weights" in s3.get_bytes(b, "triton/digits_router/config.pbtxt").decode()
    assert passed[0]["compared"] >= 10 and passed[0]["agreement"] is not None  # answers compared, on S3 too
    assert s3.exists(b, "triton/digits_agreement/config.pbtxt")


def test_each_store_failure_has_its_reason_and_is_not_retried(s3e2e):
    e, k, b = s3e2e, s3e2e["k"], s3e2e["bucket"]
    cases = {  # name -> (resource, condition reason, text in the message)
        "s3-no-key": (resource("s3-no-key", e, model=f"s3://{b}/models/missing.pt"), "StorageNotFound", "NoSuchKey"),
        "s3-no-bucket": (resource("s3-no-bucket", e, model="s3://lathe-no-such-bucket/m.pt"), "StorageNotFound",
                         "NoSuchBucket"),
        "s3-denied": (resource("s3-denied", e, secret="s3-wrong"), "StorageAccessDenied", "SignatureDoesNotMatch"),
        "s3-down": (resource("s3-down", e, endpoint=f"http://127.0.0.1:{free_port()}"), "StorageUnreachable",
                    "unreachable"),
    }
    invalid = {  # refused by validation: no Job at all
        "s3-no-secret": (resource("s3-no-secret", e, secret="nope"), "Secret 'nope' not found"),
        "s3-half-secret": (resource("s3-half-secret", e, secret="s3-half"), "has no key AWS_SECRET_ACCESS_KEY"),
    }
    for doc, *_ in [*cases.values(), *invalid.values()]:
        k.apply(doc)
    for name, (_, reason, text) in cases.items():
        st = k.wait(name, lambda s: s.get("phase") in DONE, 300, f"{name} done")
        cond = {c["type"]: c for c in st["conditions"]}["Validated"]
        assert st["phase"] == "Failed" and cond["reason"] == reason and text in cond["message"], (name, cond)
        assert st["job"]["attempt"] == 1 and st["job"]["exitCode"] == 2, (name, st["job"])
        print(f"{name}: {reason}: {cond['message']}")  # quoted in docs/storage.md
    for name, (_, text) in invalid.items():
        st = k.wait(name, lambda s: s.get("phase") in DONE, 120, f"{name} refused")
        assert st["phase"] == "Failed" and "spec.storage.s3.secretRef: " in st["message"] and text in st["message"], st
    jobs = e["batch"].list_namespaced_job(e["ns"]).items
    by_resource = {}
    for j in jobs:
        by_resource.setdefault(j.metadata.labels["lathe.dev/name"], []).append(j.metadata.name)
    assert all(len(by_resource.get(n, [])) == 1 for n in cases), by_resource  # one attempt each
    assert not set(invalid) & set(by_resource), by_resource
    # No secret value in any status, event or the operator's log.
    secrets = [e["server"].secret_key, "wrong-secret-value-1234"]
    events = k.kubectl("get", "events", "-o", "json")
    statuses = json.dumps([k.status(n) for n in [*cases, *invalid]])
    for text in (events, statuses, e["log"].read_text()):
        assert not any(s in text for s in secrets)
    wait_for(lambda: {"StorageNotFound", "StorageAccessDenied", "StorageUnreachable"}
             <= {ev["reason"] for ev in json.loads(k.kubectl("get", "events", "-o", "json"))["items"]},
             timeout=30, interval=0.5, what="an event per reason")
