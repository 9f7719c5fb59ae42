"""The chain through the operator with its model and data on Google Cloud Storage (fake-gcs-server) and
on Azure Blob Storage (Azurite), credentials from a Secret named by spec.storage.gcs / spec.storage.azure
and handed to the worker pod by secretKeyRef (s3:// is tests/e2e/test_s3_end_to_end.py, which also
publishes and rolls out from S3).

- az://: model, calibration and validation data read from Azurite, the reports kept under an az://
  artifacts prefix; a Triton repository on az:// is refused before any Job (Triton cannot reach it:
  tests/stores/test_triton_stores.py).
- gs://: model and data read from fake-gcs-server; the reports cannot be kept there, because that
  emulator refuses object_store's writes (tests/stores/test_objects.py): the run still succeeds, lists no
  gs:// copy, and its kept result says where the copy failed and why, as for any store refusing a write.
And on each: a missing object, wrong credentials (Azure; fake-gcs-server checks none), an endpoint that
is down, and a Secret without the key the store needs, each with its own reason, no retry, and no secret
value in any status, event or the operator's log."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from e2e.controlplane.fixture import free_port
from tests.e2e.chain import BIN, Cluster, Operator

DONE = ("Succeeded", "Failed", "Rejected", "RolledBack")


@pytest.fixture(scope="module", params=["gs", "az"])
def storee2e(request, control_plane, k8s_client, node_agent, tmp_path_factory):
    from lathe.worker.samples import make_digits

    scheme = request.param
    server = request.getfixturevalue("gcs_server" if scheme == "gs" else "azurite_server")
    ns = f"{scheme}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(k8s_client)
    core.create_namespace({"metadata": {"name": ns}})
    bucket = server.make_bucket(f"lathe-e2e-{uuid.uuid4().hex[:8]}")
    work = tmp_path_factory.mktemp(f"{scheme}e2e")
    sample = make_digits(work / "digits")
    for role in ("model", "calibration", "validation"):
        data = Path(sample[role]).read_bytes()
        if scheme == "gs":
            server.upload(bucket, f"models/{Path(sample[role]).name}", data)
        else:
            server.client().put_bytes(bucket, f"models/{Path(sample[role]).name}", data)

    def secret(name: str, **data: str) -> None:
        core.create_namespaced_secret(ns, {"metadata": {"name": name}, "type": "Opaque",
                                           "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    if scheme == "gs":
        secret("creds", **{"service-account.json": server.key_json()})
        secret("half", **{"key.json": server.key_json()})
        secrets = [server.key_json()]
    else:
        wrong_key = base64.b64encode(b"w" * 64).decode()
        secret("creds", AZURE_STORAGE_ACCOUNT_NAME=server.account, AZURE_STORAGE_ACCOUNT_KEY=server.key)
        secret("wrong", AZURE_STORAGE_ACCOUNT_NAME=server.account, AZURE_STORAGE_ACCOUNT_KEY=wrong_key)
        secret("half", AZURE_STORAGE_ACCOUNT_NAME=server.account)
        secrets = [server.key, wrong_key]
    env = dict(os.environ, KUBECONFIG=str(control_plane.kubeconfig), LATHE_WORKER_COMMAND=f"{BIN / 'lathe'} worker",
               LATHE_METRICS_PORT=str(free_port()), LATHE_MAX_ATTEMPTS="2", LATHE_BENCH_SECONDS="4")
    creds = ("GOOGLE_SERVICE_ACCOUNT_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCOUNT_NAME")
    assert not [k for k in creds if k in env], "the worker must get its credentials from the Secret alone"
    op = Operator(env, ns, work / "operator.log")
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: print("operator log tail:\n" + (work / "operator.log").read_text()[-4000:])
                       if (work / "operator.log").exists() else None)
        stack.callback(op.stop)
        op.start()
        yield {"scheme": scheme, "ns": ns, "k8s": k8s_client, "k": Cluster(k8s_client, control_plane.kubeconfig, ns), "bucket": bucket,
               "server": server, "client": server.client(), "work": work, "log": work / "operator.log",
               "batch": client.BatchV1Api(k8s_client), "secrets": secrets}


def resource(name: str, e: dict, *, model: str | None = None, secret: str = "creds", endpoint: str | None = None,
             repository: str | None = None) -> dict:
    s, b = e["scheme"], e["bucket"]
    field = {"gs": "gcs", "az": "azure"}[s]
    spec = {
        "model": {"uri": model or f"{s}://{b}/models/digits_cnn.pt", "format": "torchscript",
                  "inputs": [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]},
        "data": {"calibration": {"uri": f"{s}://{b}/models/digits_calibration.npz"},
                 "validation": {"uri": f"{s}://{b}/models/digits_validation.npz"}},
        "target": {"runtimes": ["onnxruntime"], "batchSizes": [1]},
        "candidates": [{"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static"}]}],
        "budget": {"maxAccuracyDrop": 0.02, "minSpeedup": 0.0},  # the storage path is under test, not speed
        "storage": {field: {"secretRef": secret, "endpoint": endpoint or e["server"].endpoint}},
        "artifacts": f"{s}://{b}/reports",
    }
    if repository:
        spec["publish"] = {"repository": repository, "modelName": "digits"}
    return {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": name},
            "spec": spec}


def test_model_data_and_reports_on_the_store(storee2e):
    e, k, c, b, s = storee2e, storee2e["k"], storee2e["client"], storee2e["bucket"], storee2e["scheme"]
    name = f"{s}-digits"
    k.apply(resource(name, e))
    st = k.wait(name, lambda x: x.get("phase") in DONE, 600, f"{name} done")
    assert st["phase"] == "Succeeded", (st.get("message"), st.get("conditions"))
    assert st["winner"] and st["job"]["attempt"] == 1
    prefix = f"reports/{e['ns']}/{name}/generation-1"
    if s == "az":
        assert {f"{prefix}/result.json", f"{prefix}/report.html"} <= {o.key for o in c.list(b, "reports/")[0]}
        assert f"az://{b}/{prefix}/report.html" in st["reportCopies"]
        kept = json.loads(c.get_bytes(b, f"{prefix}/result.json"))
        assert kept["winner"] == st["winner"]
    else:  # the emulator takes no object_store write: the copy fails, the run does not, and says so
        assert c.list(b, "reports/") == ([], [])
        assert not [x for x in st.get("reportCopies", []) if x.startswith("gs://")], st
        from lathe.api import result_log

        cm = client.CoreV1Api(e["k8s"]).read_namespaced_config_map(st["reportConfigMap"], e["ns"])
        kept = result_log.unpack(base64.b64decode(cm.binary_data[result_log.CONFIG_MAP_KEY]))["result"]
        assert any("report not kept" in w and "invalid uploadType" in w for w in kept["warnings"]), kept["warnings"]


def test_each_store_failure_has_its_reason_and_is_not_retried(storee2e):
    e, k, b, s = storee2e, storee2e["k"], storee2e["bucket"], storee2e["scheme"]
    cases = {  # name -> (resource, condition reason, text in the message)
        f"{s}-no-key": (resource(f"{s}-no-key", e, model=f"{s}://{b}/models/missing.pt"), "StorageNotFound",
                        "answered HTTP 404"),
        f"{s}-down": (resource(f"{s}-down", e, endpoint=f"http://127.0.0.1:{free_port()}"), "StorageUnreachable",
                      "unreachable"),
    }
    if s == "az":  # fake-gcs-server authenticates nobody
        cases["az-denied"] = (resource("az-denied", e, secret="wrong"), "StorageAccessDenied", "AuthorizationFailure")
    field = {"gs": "gcs", "az": "azure"}[s]
    invalid = {  # refused by validation: no Job at all
        f"{s}-no-secret": (resource(f"{s}-no-secret", e, secret="nope"), f"spec.storage.{field}.secretRef: ",
                           "Secret 'nope' not found"),
        f"{s}-half-secret": (resource(f"{s}-half-secret", e, secret="half"), f"spec.storage.{field}.secretRef: ",
                             "has no key"),
    }
    if s == "az":
        invalid["az-repository"] = (resource("az-repository", e, repository=f"az://{b}/triton"),
                                    "spec.publish.repository: ", "az:// cannot hold a Triton repository")
    for doc, *_ in [*cases.values(), *invalid.values()]:
        k.apply(doc)
    for name, (_, reason, text) in cases.items():
        st = k.wait(name, lambda x: x.get("phase") in DONE, 300, f"{name} done")
        cond = {c["type"]: c for c in st["conditions"]}["Validated"]
        assert st["phase"] == "Failed" and cond["reason"] == reason and text in cond["message"], (name, cond)
        assert st["job"]["attempt"] == 1 and st["job"]["exitCode"] == 2, (name, st["job"])
        print(f"{name}: {reason}: {cond['message']}")  # quoted in docs/storage.md
    for name, (_, field_text, text) in invalid.items():
        st = k.wait(name, lambda x: x.get("phase") in DONE, 120, f"{name} refused")
        assert st["phase"] == "Failed" and field_text in st["message"] and text in st["message"], st
    by_resource: dict[str, list[str]] = {}
    for j in e["batch"].list_namespaced_job(e["ns"]).items:
        by_resource.setdefault(j.metadata.labels["lathe.dev/name"], []).append(j.metadata.name)
    assert all(len(by_resource.get(n, [])) == 1 for n in cases), by_resource  # one attempt each
    assert not set(invalid) & set(by_resource), by_resource
    events = k.kubectl("get", "events", "-o", "json")
    statuses = json.dumps([k.status(n) for n in [*cases, *invalid]])
    for text in (events, statuses, e["log"].read_text()):
        assert not [sec for sec in e["secrets"] if sec in text]
