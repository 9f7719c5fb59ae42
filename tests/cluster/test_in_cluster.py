"""Lathe the way a cluster runs it: the chart installed with the real Helm SDK, the operator as a
Deployment pod from the built operator image with its own ServiceAccount token and namespaced
RBAC, worker Jobs scheduled by kube-scheduler and run by the kubelet as real containers from the
built worker image (non-root, read-only root, dropped capabilities, cgroup limits, hostPath
PersistentVolumes, termination message read by the kubelet), publishing to a real Triton (a host
process on the node's bridge) and a judged canary under live traffic.

Nothing here goes through the node agent. The chain tests that ran on it until issue 21
(tests/e2e/test_end_to_end.py: the canary with mirrored answers compared and production samples
captured, a spec change mid-canary, an operator restart mid-canary, a corrupt model) run here, on
the real node and the built images."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from kubernetes import client
from tritonclient.http import InferenceServerClient

from e2e.node.fixture import NODE_IP
from e2e.triton.server import TritonServer
from tests.e2e.chain import (
    Cluster,
    Load,
    assert_report_kept,
    canary_under_load,
    resource,
    triton_top1,
)
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lathe"
OPERATOR_NS = "lathe-system"
RELEASE = "lathe"
# Small enough that the operator and one worker fit this 2-core node; the scheduler checks them.
WORKER_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "6Gi"}}


def _hostpath_claim(core, ns: str, claim: str, path: Path) -> None:
    """A hostPath PersistentVolume pre-bound to ``ns/claim`` (how shared RWX storage appears in
    two namespaces: one PV each, the same export), bound by the real PV controller."""
    pv = f"{ns}-{claim}"
    core.create_persistent_volume({
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "hostPath": {"path": str(path), "type": "Directory"},
                 "claimRef": {"namespace": ns, "name": claim}}})
    core.create_namespaced_persistent_volume_claim(ns, {
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}}})


def _shared_folder(path: Path) -> Path:
    # Pods run as 65532 and hostPath volumes keep host ownership: the folders must be writable.
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


@pytest.fixture(scope="module")
def installed(real_cluster, tmp_path_factory):
    import helm_python as helm

    from lathe.worker.samples import make_digits

    cp = real_cluster.cp
    # Everything started here is stopped on every path, a failed set-up included (last first).
    with contextlib.ExitStack() as stack:
        api = cp.api_client()
        stack.callback(api.close)
        core = client.CoreV1Api(api)
        ns = f"ml-{uuid.uuid4().hex[:6]}"
        storage = tmp_path_factory.mktemp("cluster-storage")
        storage.chmod(0o755)
        models, repo = _shared_folder(storage / "models"), _shared_folder(storage / "triton-models")
        captures = _shared_folder(storage / "captures")  # production samples the operator captures in a canary
        sample = make_digits(models / "digits")
        (models / "digits" / "corrupt.onnx").write_bytes(b"this is not an ONNX model" * 10)
        for name in (OPERATOR_NS, ns):
            core.create_namespace({"metadata": {"name": name}})
        _hostpath_claim(core, ns, "models", models)
        _hostpath_claim(core, ns, "triton-models", repo)
        _hostpath_claim(core, OPERATOR_NS, "triton-models", repo)
        _hostpath_claim(core, ns, "captures", captures)
        _hostpath_claim(core, OPERATOR_NS, "captures", captures)

        triton = TritonServer(repo, workdir=tmp_path_factory.mktemp("cluster-triton"), host=NODE_IP)
        stack.callback(triton.stop)  # also when its start fails or is interrupted half-way
        triton.start()
        cfg = helm.Config(kubeconfig_path=str(cp.kubeconfig))
        stack.callback(cfg.close)
        values = {"image": {"pullPolicy": "Never"},
                  "worker": {"resources": WORKER_RESOURCES, "maxAttempts": 1, "benchSeconds": 6},
                  "watchNamespaces": [ns], "repositoryClaims": ["triton-models", "captures"],
                  "rolloutInterval": 1}  # as tests/e2e sets it
        t0 = time.monotonic()
        try:
            release = cfg.install(str(CHART), RELEASE, values, namespace=OPERATOR_NS, wait="watcher", timeout=240)
            install_s = time.monotonic() - t0
            print(f"helm install (to a ready operator pod) took {install_s:.1f}s")
            yield {"cp": cp, "core": core, "api": api, "ns": ns, "sample": sample, "triton": triton, "repo": repo,
                   "captures": captures,
                   "release": release, "cluster": Cluster(api, cp.kubeconfig, ns), "node": real_cluster.node,
                   "images": real_cluster.images}
        finally:
            try:
                print("operator log tail:\n" + _kubectl(cp, "-n", OPERATOR_NS, "logs", f"deploy/{RELEASE}-operator",
                                                         "--tail=60", check=False))
            finally:
                cfg.uninstall(RELEASE, wait="watcher", timeout=120, ignore_not_found=True)


def _kubectl(cp, *args: str, check: bool = True) -> str:
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "kubectl"), "--kubeconfig", str(cp.kubeconfig), *args],
                         capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, f"kubectl {' '.join(args)} failed: {out.stderr}"
    return out.stdout + (out.stderr if not check else "")


def _operator_pod(core) -> client.V1Pod:
    pods = core.list_namespaced_pod(OPERATOR_NS, label_selector="app.kubernetes.io/component=operator").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def test_operator_runs_as_a_real_pod_with_its_own_identity(installed):
    cp, core = installed["cp"], installed["core"]
    pod = _operator_pod(core)
    status = pod.status.container_statuses[0]
    assert pod.spec.node_name == installed["node"].name and status.ready
    assert status.container_id.startswith("containerd://")
    assert status.image.endswith("lathe-operator:0.1.0"), status.image
    assert pod.spec.service_account_name == f"{RELEASE}-operator"
    # The kubelet enforced the securityContext: non-root, read-only root, no capabilities.
    name = pod.metadata.name
    ident = _kubectl(cp, "-n", OPERATOR_NS, "exec", name, "--", "id", "-u")
    assert ident.strip() == "65532"
    ro = _kubectl(cp, "-n", OPERATOR_NS, "exec", name, "--", "sh", "-c",
                  "touch /app-write-test 2>&1; echo rc=$?", check=False)
    assert "Read-only file system" in ro and "rc=1" in ro, ro
    caps = _kubectl(cp, "-n", OPERATOR_NS, "exec", name, "--", "sh", "-c", "grep CapEff /proc/1/status")
    assert caps.split()[-1] == "0000000000000000", caps
    # In-cluster configuration: the ServiceAccount token the kubelet projected, and the
    # kubernetes Service address, not a kubeconfig.
    env = _kubectl(cp, "-n", OPERATOR_NS, "exec", name, "--", "sh", "-c",
                   "echo host=$KUBERNETES_SERVICE_HOST kc=${KUBECONFIG:-none}; "
                   "ls /var/run/secrets/kubernetes.io/serviceaccount")
    assert "host=198.18.1.1" in env and "kc=none" in env and "token" in env, env


def test_apply_to_promoted_canary_on_the_real_node(installed, tmp_path):
    k, triton, sample, core, ns = (installed[x] for x in ("cluster", "triton", "sample", "core", "ns"))
    e2e = {"triton": triton}
    t0 = time.monotonic()
    doc = resource("digits", e2e)
    k.apply(doc)
    applied = k.api.get_namespaced_custom_object("lathe.dev", "v1alpha1", ns, "modeloptimizations", "digits")
    st = k.wait("digits", lambda s: s.get("phase") in ("Succeeded", "Failed", "Rejected", "RolledBack"), 900,
                "digits v1 done")
    first_s = time.monotonic() - t0
    assert st["phase"] == "Succeeded", st.get("message")
    # What a GitOps tool diffs is untouched by a whole reconcile: `kubectl diff` (a server-side
    # dry-run apply, what Argo CD and Flux compare with) of the same manifest finds nothing.
    diff = subprocess.run([str(ROOT / ".venv" / "bin" / "kubectl"), "--kubeconfig", str(installed["cp"].kubeconfig),
                           "-n", ns, "diff", "-f", "-"], input=yaml.safe_dump(doc), capture_output=True, text=True)
    assert diff.returncode == 0, f"reconcile changed a field GitOps would diff:\n{diff.stdout}{diff.stderr}"
    done = k.api.get_namespaced_custom_object("lathe.dev", "v1alpha1", ns, "modeloptimizations", "digits")
    assert done["spec"] == applied["spec"] and done["metadata"]["generation"] == applied["metadata"]["generation"]
    for field in ("labels", "annotations"):
        assert done["metadata"].get(field) == applied["metadata"].get(field), field
    assert st["published"]["version"] == 1 and st["rollout"]["state"] == "Promoted"
    win = next(c for c in st["candidates"] if c["name"] == st["winner"])
    assert triton_top1(triton, "digits", sample) == pytest.approx(win["accuracy"], abs=1e-5)
    # The full result read from the real container's log (kubelet -> API server) by the operator pod.
    assert_report_kept(k, st, "digits", tmp_path)

    # The worker ran as a real container from the worker image, placed by the scheduler.
    pods = core.list_namespaced_pod(ns, label_selector="lathe.dev/name=digits").items
    assert pods, "no worker pod"
    pod = pods[0]
    term = pod.status.container_statuses[0].state.terminated
    assert pod.spec.node_name == installed["node"].name
    assert pod.status.container_statuses[0].image.endswith("lathe-worker:0.1.0")
    assert term.exit_code == 0 and term.reason == "Completed"
    summary = json.loads(term.message)  # written to /dev/termination-log, read back by the kubelet
    assert summary and len(term.message) < 4096
    sc = pod.spec.containers[0].security_context
    assert sc.read_only_root_filesystem and sc.run_as_user == 65532 and sc.capabilities.drop == ["ALL"]
    assert pod.spec.containers[0].resources.requests["cpu"] == "500m"
    scheduled = [e for e in core.list_namespaced_event(ns, field_selector=f"involvedObject.name={pod.metadata.name}").items
                 if e.reason == "Scheduled"]
    assert scheduled and "default-scheduler" in (scheduled[0].reporting_component or scheduled[0].source.component
                                                 or ""), [(e.reason, e.source) for e in scheduled]

    table = k.kubectl("get", "mopt")
    print(f"kubectl get mopt after generation 1:\n{table}")
    assert "digits" in table and "Succeeded" in table and st["winner"] in table and st["speedup"] in table

    # Generation 2: a canary of version 2 under live traffic, judged, promoted; half the canary step's
    # requests also answered by the other version and compared, and half of what stable answered
    # captured (by the operator pod, on its mount of the captures claim).
    capture = {"enabled": True, "samplePercent": 50, "maxSamples": 40, "uri": "pvc://captures/digits"}
    st, load, canary_s = canary_under_load(k, e2e, sample, timeout=900, capture=capture)
    assert st["phase"] == "Succeeded", st.get("message")
    ro = st["rollout"]
    assert ro["state"] == "Promoted" and ro["stableVersion"] == 2, ro
    assert load.failed == 0, load.errors[:5]
    steps = [h for h in ro["history"] if h["decision"] == "Passed"]
    assert steps and steps[0]["weight"] == 30 and steps[0]["requests"]["2"] >= 20, ro["history"]
    # the INT8 canary agrees with stable above the floor the budget (0.02) sets, 1 - 2 x 0.02
    assert steps[0]["compared"] >= 20 and steps[0]["agreement"] >= 0.96, steps[0]
    # Production samples: written where the spec said, loadable as a calibration set of the model, and
    # judged representative (the validation inputs the client sent come from the calibration set's mix).
    cap = ro["capture"]
    assert cap["state"] == "Complete" and 0 < cap["samples"] <= 40, cap
    assert cap["dataset"] == "pvc://captures/digits/production.npz", cap
    with np.load(installed["captures"] / "digits" / "production.npz") as z:
        assert sorted(z.files) == ["input"] and z["input"].shape[1:] == (1, 8, 8) and len(z["input"]) == cap["samples"]
        sent = {r.tobytes() for r in np.load(sample["validation"])["input"].astype(np.float32)}
        assert all(r.tobytes() in sent for r in z["input"])
    assert cap["report"]["calibrationSamples"] > 0 and cap["report"]["representative"] is True, cap["report"]
    c = InferenceServerClient(triton.http_url)
    assert c.is_model_ready("digits", "2") and not c.is_model_ready("digits", "1")
    wanted = {"JobCreated", "Published", "RolloutStarted", "Promoted", "SpecChanged", "CaptureComplete"}
    wait_for(lambda: wanted <= {e["reason"] for e in json.loads(k.kubectl("get", "events", "-o", "json"))["items"]},
             timeout=30, interval=0.5, what=f"events {wanted}")
    print(f"real node: kubectl apply -> promoted v1 {first_s:.1f}s; spec change -> promoted canary v2 {canary_s:.1f}s")


def test_spec_change_mid_canary_sends_traffic_back_to_stable(installed):
    """Continues from the test above: version 2 is stable. Generation 3, calibrated on the production samples
    generation 2's canary kept, publishes a canary and holds it at 30% (long pause); generation 4 (a corrupt
    model, and a Triton URL nothing answers) supersedes it before the analysis ends: the canary is undone on
    the Triton it started on, with no failed request."""
    k, triton, sample = installed["cluster"], installed["triton"], installed["sample"]
    e2e = {"triton": triton}
    c = InferenceServerClient(triton.http_url)
    assert c.is_model_ready("digits", "2")
    held = {"steps": [{"weight": 30, "pauseSeconds": 600, "minRequests": 1}, {"weight": 100}],
            "analysis": {"maxErrorRate": 0.0, "maxLatencyRatio": 5.0}}
    load = Load(triton.http_url, "digits_router", np.load(sample["validation"])["input"])
    load.start()
    try:
        k.apply(resource("digits", e2e, rollout=held, calibration="pvc://captures/digits/production.npz", candidates=[
            {"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static"}]}]))
        st = k.wait("digits", lambda s: s.get("observedGeneration") == 3
                    and (s.get("rollout") or {}).get("state") == "Progressing"
                    and (s["rollout"].get("weights") or {}).get(str(s["rollout"]["canaryVersion"])) == 30,
                    600, "canary at 30%")
        canary = st["rollout"]["canaryVersion"]
        assert st["rollout"]["stableVersion"] == 2 and canary != 2 and c.is_model_ready("digits", str(canary))
        # Its only candidate, static INT8, was calibrated on the capture (a missing or unreadable
        # calibration file ends the run with a data error instead) and met the budget.
        assert st["winner"] == "int8-static" and st["candidates"][0]["verdict"] == "passed", st["candidates"]
        # 127.0.0.1 inside the operator's pod: nothing listens there
        k.apply(resource("digits", e2e, rollout=held, model="pvc://models/digits/corrupt.onnx", fmt="onnx",
                         triton_url="127.0.0.1:1"))
        st = k.wait("digits", lambda s: s.get("observedGeneration") == 4
                    and s.get("phase") in ("Failed", "Succeeded"), 600, "generation 4 done")
        load.settle()  # the request in flight during the swap is counted too
    finally:
        load.stop.set()
        load.join(10)
    ro = st["rollout"]
    assert ro["state"] == "RolledBack" and "generation 4 supersedes" in ro["reason"], ro
    assert ro["publish"]["tritonUrl"] == triton.http_url
    assert f"canary of version {canary}" in ro["reason"] and "back to version 2" in ro["reason"]
    assert c.is_model_ready("digits", "2") and not c.is_model_ready("digits", str(canary))
    assert load.failed == 0 and load.ok > 0, load.errors[:5]
    assert st["phase"] == "Failed" and st["job"]["exitCode"] == 2  # generation 4's corrupt model
    events = json.loads(k.kubectl("get", "events", "-o", "json"))["items"]
    assert any(e["reason"] == "RolloutAbandoned" and f"version {canary}" in e["message"] for e in events)


def test_corrupt_model_fails_cleanly_in_a_real_pod(installed):
    k = installed["cluster"]
    versions = sorted(p.name for p in (installed["repo"] / "digits").iterdir())
    k.apply(resource("corrupt", {"triton": installed["triton"]}, model="pvc://models/digits/corrupt.onnx",
                     fmt="onnx"))
    st = k.wait("corrupt", lambda s: s.get("phase") in ("Failed", "Succeeded"), 600, "corrupt model refused")
    assert st["phase"] == "Failed" and st["job"]["exitCode"] == 2
    cond = {c["type"]: c for c in st["conditions"]}["Validated"]
    assert cond["reason"] == "InvalidInput" and "corrupt.onnx" in cond["message"]
    assert sorted(p.name for p in (installed["repo"] / "digits").iterdir()) == versions


def test_a_path_that_leaves_its_claim_through_a_symlink_is_refused_in_a_real_pod(installed):
    """What the API server cannot see: `pvc://models/escape/passwd` is a clean path, but `escape` is a symlink
    inside the claim to the container's /etc. The worker resolves it, refuses it, and reads nothing."""
    k = installed["cluster"]
    models = Path(installed["sample"]["model"]).parents[1]  # the folder behind the claim `models`
    link = models / "escape"
    link.symlink_to("/etc")
    try:
        doc = resource("escape", {"triton": installed["triton"]})
        doc["spec"]["data"]["validation"]["uri"] = "pvc://models/escape/passwd"
        k.apply(doc)
        st = k.wait("escape", lambda s: s.get("phase") in ("Failed", "Succeeded"), 600, "escaping path refused")
    finally:
        link.unlink()
    assert st["phase"] == "Failed" and st["job"]["exitCode"] == 2, st.get("message")
    cond = {c["type"]: c for c in st["conditions"]}["Validated"]
    assert cond["reason"] == "InvalidInput", cond
    assert ("fetch: validation data: pvc://models/escape/passwd: 'escape/passwd' resolves to /etc/passwd, outside "
            "/mnt/pvc/models") in cond["message"], cond["message"]


def test_a_worker_killed_for_memory_says_so_with_its_limit_stage_and_batch(installed):
    """A batch whose inputs fit the limit (1.8 GiB of 8x8 images under 2Gi, so neither the operator nor the
    worker refuses it) but whose run cannot: the kernel kills the worker at the benchmark, and the status says
    it was memory, under which limit, where and at which batch size (OOMKilled, or exit 137 under the limit
    when containerd 1.6 loses the OOM event's race)."""
    k = installed["cluster"]
    doc = resource("oom", {"triton": installed["triton"]},
                   candidates=[{"name": "optimized", "passes": [{"type": "graph-optimize", "level": "all"}]}])
    doc["spec"]["target"].update({"batchSizes": [1, 7500000], "resources": {"limits": {"memory": "2Gi"}}})
    del doc["spec"]["publish"]
    k.apply(doc)
    st = k.wait("oom", lambda s: s.get("phase") in ("Failed", "Succeeded", "Rejected"), 900, "worker killed")
    assert st["phase"] == "Failed" and st["job"]["exitCode"] == 137, st.get("message")
    cond = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert cond["reason"] == "WorkerFailed", cond
    msg = cond["message"]
    assert msg.startswith("Job oom-g1-a1: OOMKilled: the worker needed more than its memory limit 2Gi (exit code 137)") \
        or msg.startswith("Job oom-g1-a1: killed by SIGKILL (exit code 137, reason Error) under its memory limit 2Gi: "
                          "most likely for memory"), msg
    assert " during benchmark " in msg and "7500000" in msg, msg
    print(f"real node, worker killed for memory: {msg}")


def test_a_gpu_resource_on_a_cluster_without_gpus_says_what_is_missing(installed):
    """The real kube-scheduler cannot place the GPU worker (this node offers no nvidia.com/gpu): the
    resource says so with the scheduler's own words instead of waiting in silence."""
    k = installed["cluster"]
    doc = resource("needs-gpu", {"triton": installed["triton"]},
                   candidates=[{"name": "fp16", "passes": [{"type": "quantize", "precision": "fp16"}]}])
    doc["spec"]["target"] = {"device": "gpu", "runtimes": ["tensorrt"], "batchSizes": [1]}
    del doc["spec"]["publish"]
    k.apply(doc)
    try:
        st = k.wait("needs-gpu", lambda s: s.get("stage") == "scheduling", 120, "unschedulable GPU worker reported")
        cond = {c["type"]: c for c in st["conditions"]}["Scheduled"]
        assert cond["status"] == "False" and cond["reason"] == "Unschedulable", cond
        assert "(1 nvidia.com/gpu)" in cond["message"] and "Insufficient nvidia.com/gpu" in cond["message"], cond
        assert st["phase"] == "Pending" and st["message"] == cond["message"]
        events = json.loads(k.kubectl("get", "events", "-o", "json"))["items"]
        assert any(e["reason"] == "WorkerUnschedulable" and "nvidia.com/gpu" in e["message"] for e in events)
    finally:
        k.kubectl("delete", "mopt", "needs-gpu", "--wait=true", "--timeout=60s")


def test_operator_metrics_are_served_through_its_service(installed):
    cp, core = installed["cp"], installed["core"]
    svc = core.read_namespaced_service(f"{RELEASE}-operator-metrics", OPERATOR_NS)
    port = svc.spec.ports[0].port
    # The API server's service proxy reaches the pod through the Service's endpoints, as Prometheus
    # would through its own discovery.
    text = wait_for(lambda: _kubectl(cp, "get", "--raw",
                                     f"/api/v1/namespaces/{OPERATOR_NS}/services/{svc.metadata.name}:{port}"
                                     "/proxy/metrics", check=False), 60, interval=1, what="metrics via service")
    assert "lathe_jobs_created_total" in text and "lathe_reconciles_total" in text, text[:500]


def test_node_runs_no_host_process_for_pods(installed):
    """Every pod of the cluster is a containerd task: nothing was run by a stand-in."""
    node, core = installed["node"], installed["core"]
    pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node.name}").items
    running = [p for p in pods if p.status.phase == "Running"]
    assert running
    tasks = set(node.running_tasks())
    for p in running:
        for c in p.status.container_statuses:
            assert c.container_id.startswith("containerd://"), (p.metadata.name, c.container_id)
            assert c.container_id.removeprefix("containerd://") in tasks, (p.metadata.name, sorted(tasks))


def test_operator_restart_mid_canary_continues_the_same_rollout(installed):
    """The operator's pod stopped in the middle of a canary (its Deployment scaled to 0) and started again
    carries on from status: the same step (its start kept), the same canary, the same Job, nothing published
    again, traffic unbroken; the step ends `pause` after it began, not `pause` after the restart.

    Its own resource and model; objective size (the int8 candidate is the smallest): what is tested is the
    restart, not the speed of this busy box."""
    k, triton, sample = installed["cluster"], installed["triton"], installed["sample"]
    apps = client.AppsV1Api(installed["api"])
    name, model, pause, down = "restart", "digits_restart", 40, 8

    def doc(candidate: dict, rollout=None) -> dict:
        d = resource(name, {"triton": triton}, candidates=[candidate], rollout=rollout)
        d["spec"]["objective"] = "size"
        d["spec"]["publish"]["modelName"] = model
        return d

    def jobs() -> list[str]:
        return sorted(j.metadata.uid for j in client.BatchV1Api(installed["api"]).list_namespaced_job(
            installed["ns"], label_selector=f"lathe.dev/name={name}").items)

    def when(t: str) -> datetime:
        return datetime.fromisoformat(t.replace("Z", "+00:00"))

    def operator_pods() -> list:
        return installed["core"].list_namespaced_pod(
            OPERATOR_NS, label_selector="app.kubernetes.io/component=operator").items

    def scale(replicas: int) -> None:
        apps.patch_namespaced_deployment_scale(f"{RELEASE}-operator", OPERATOR_NS, {"spec": {"replicas": replicas}})

    # Version 1, served at once (nothing served before).
    k.apply(doc({"name": "optimized", "passes": [{"type": "graph-optimize", "level": "all"}]}))
    st = k.wait(name, lambda s: s.get("phase") in ("Succeeded", "Failed", "Rejected", "RolledBack"), 600,
                "version 1 done")
    assert st["phase"] == "Succeeded" and st["published"]["version"] == 1, st.get("message")
    c = InferenceServerClient(triton.http_url)
    held = {"steps": [{"weight": 30, "pauseSeconds": pause, "minRequests": 1}, {"weight": 100}],
            "analysis": {"maxErrorRate": 0.0, "maxLatencyRatio": 5.0}}
    load = Load(triton.http_url, f"{model}_router", np.load(sample["validation"])["input"])
    load.start()
    try:
        wait_for(lambda: load.ok > 0 or load.failed > 0, 30, what="a first request to the router")
        assert load.failed == 0, load.errors[:3]
        # Generation 2: version 2 as a canary held at 30% for `pause` seconds.
        k.apply(doc({"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static"}]},
                    rollout=held))
        st = k.wait(name, lambda s: s.get("observedGeneration") == 2
                    and (s.get("rollout") or {}).get("state") == "Progressing"
                    and (s["rollout"].get("weights") or {}).get(str(s["rollout"]["canaryVersion"])) == 30,
                    600, "canary at 30%")
        ro, job, published = st["rollout"], st["job"], st["published"]
        assert ro["stableVersion"] == 1 and ro["canaryVersion"] == published["version"] == 2, ro
        (measuring,) = [h for h in ro["history"] if h["decision"] == "Measuring"]
        step_start = when(measuring["time"])
        versions, uids = sorted(p.name for p in (installed["repo"] / model).iterdir()), jobs()
        scale(0)
        wait_for(lambda: not operator_pods(), 60, 0.5, "the operator's pod gone")
        stopped = datetime.now(UTC)
        assert (stopped - step_start).total_seconds() < pause - down - 5, "the restart must land inside the step"
        time.sleep(down)  # the operator stays down this long: the outage under test, not a wait for a condition
        restarted = datetime.now(UTC)
        scale(1)
        st = k.wait(name, lambda s: (s.get("rollout") or {}).get("state") != "Progressing", 180,
                    "canary decided after the restart")
        load.settle()  # the request in flight during the swap is counted too
    finally:
        load.stop.set()
        load.join(10)
        scale(1)
        wait_for(lambda: any(p.status.container_statuses and p.status.container_statuses[0].ready
                             for p in operator_pods()), 180, 1, "the operator's pod ready again")
    assert st["observedGeneration"] == 2 and st["phase"] == "Succeeded", st.get("message")
    after = st["rollout"]
    assert after["state"] == "Promoted" and after["stableVersion"] == 2, after
    assert st["published"] == published
    assert {f: st["job"][f] for f in ("name", "attempt", "generation")} == {
        f: job[f] for f in ("name", "attempt", "generation")}
    assert jobs() == uids  # the worker did not run again
    assert sorted(p.name for p in (installed["repo"] / model).iterdir()) == versions  # nothing published again
    step = [h for h in after["history"] if h["step"] == 0 and h["weight"] == 30][-1]
    decided = when(step["time"])
    # Resumed, the step passes about `pause` after it began; measured afresh by the new operator pod,
    # not before `pause` after the restart (`down` seconds and more after the step began).
    assert step["decision"] == "Passed", after["history"]
    assert (decided - step_start).total_seconds() >= pause, (step_start, decided)
    assert decided < restarted + timedelta(seconds=pause - 3), (step_start, stopped, restarted, decided)
    assert c.is_model_ready(model, "2") and not c.is_model_ready(model, "1")
    assert load.failed == 0 and load.ok > 0, load.errors[:5]
    print(f"real node: operator down {down}s mid-canary, step decided {(decided - step_start).total_seconds():.1f}s "
          f"after it began ({(decided - restarted).total_seconds():.1f}s after the scale-up)")



def test_a_split_search_runs_its_build_and_benchmark_jobs_as_real_pods(installed):
    """Issue 23 on the real node and the real scheduler: spec.search.parallelism 2 gives two build Jobs and one
    benchmark Job, each a real container of the worker image placed by kube-scheduler, handing the built candidates
    over through a claim (spec.artifacts); every candidate built once, one version published."""
    k, core, ns = installed["cluster"], installed["core"], installed["ns"]
    batch = client.BatchV1Api(installed["api"])
    name = "split"
    doc = resource(name, {"triton": installed["triton"]}, candidates=[
        {"name": "optimized", "passes": [{"type": "graph-optimize", "level": "all"}]},
        {"name": "int8-dynamic", "passes": [{"type": "quantize", "precision": "int8", "mode": "dynamic"}]},
        {"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static"}]}])
    doc["spec"]["search"] = {"parallelism": 2}
    doc["spec"]["artifacts"] = "pvc://models/artifacts"
    doc["spec"]["objective"] = "size"  # a winner however the shared cores time the candidates
    doc["spec"]["publish"]["modelName"] = "digits_split"
    t0 = time.monotonic()
    k.apply(doc)
    st = k.wait(name, lambda s: s.get("phase") in ("Succeeded", "Failed", "Rejected", "RolledBack"), 900,
                "the split search done")
    took = time.monotonic() - t0
    assert st["phase"] == "Succeeded", st.get("message")
    jobs = sorted(j.metadata.name for j in batch.list_namespaced_job(ns, label_selector=f"lathe.dev/name={name}").items)
    assert jobs == [f"{name}-g1-a1-b1", f"{name}-g1-a1-b2", f"{name}-g1-a1-bench"], jobs
    node = installed["node"].name
    for pod in core.list_namespaced_pod(ns, label_selector=f"lathe.dev/name={name}").items:
        term = pod.status.container_statuses[0].state.terminated
        assert pod.spec.node_name == node and term.exit_code == 0, (pod.metadata.name, term)
        assert pod.status.container_statuses[0].image.endswith("lathe-worker:0.1.0")
    search = st["search"]
    assert [(b["shard"], b["phase"], b["node"]) for b in search["builds"]] == [(1, "Succeeded", node),
                                                                             (2, "Succeeded", node)]
    assert sorted(c for b in search["builds"] for c in b["candidates"]) == ["int8-dynamic", "int8-static",
                                                                           "optimized"]  # each once
    (bench,) = search["benchmarks"]
    assert (bench["phase"], bench["node"]) == ("Succeeded", node)
    assert sorted(c["name"] for c in st["candidates"]) == ["int8-dynamic", "int8-static", "optimized"]
    assert st["published"]["version"] == 1 and st["published"]["candidate"] == st["winner"]
    handed = installed["repo"].parent / "models" / "artifacts" / ns / name / "generation-1" / "shards"
    assert sorted(p.name for p in handed.iterdir()) == ["shard-1", "shard-2"]
    print(f"real node: split search (2 build Jobs, 1 benchmark Job) from kubectl apply to published in {took:.1f}s")


def test_a_causal_lm_goes_from_its_gguf_to_a_served_streaming_version(installed, tmp_path):
    """Issue 22 through the whole cluster path: SmolLM2-135M's GGUF on a claim, a `causal-lm` resource applied,
    the worker image's onnxruntime-genai stack in a real container (intake, export, perplexity and agreement,
    an INT8 weight-only candidate, the decode benchmark), the winner published with the genai flavour, the
    operator's streaming router in front of it, and a stream through the router equal, token for token, to
    onnxruntime-genai's greedy output on the published folder."""
    import shutil

    from e2e.triton.generate import generate_stream, greedy
    from lathe.worker.llm.example import make_text, smollm2_gguf

    k, triton, ns, core = (installed[x] for x in ("cluster", "triton", "ns", "core"))
    folder = _shared_folder(installed["repo"].parent / "models" / "smollm2")
    shutil.copyfile(smollm2_gguf(), folder / "model.gguf")
    make_text(folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    name = model = "smollm2"
    doc = {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": name},
           "spec": {
               "model": {"uri": "pvc://models/smollm2/model.gguf", "format": "gguf"},
               "task": {"type": "causal-lm", "windowTokens": 128},
               "data": {"validation": {"uri": "pvc://models/smollm2/validation.jsonl", "maxSamples": 3},
                        "calibration": {"uri": "pvc://models/smollm2/calibration.jsonl", "maxSamples": 2}},
               "target": {"promptTokens": [32], "streams": 2},
               "candidates": [{"name": "int8", "runtime": "onnxruntime-genai",
                               "passes": [{"type": "quantize", "precision": "int8"}]}],
               # wide enough that INT8 (+0.7% perplexity, agreement 0.96 on 3,060 tokens) passes on 3 windows
               "budget": {"maxPerplexityIncrease": 0.05, "minTokenAgreement": 0.9, "minSpeedup": 0.0},
               "publish": {"repository": "pvc://triton-models/", "modelName": model,
                           "tritonUrl": triton.http_url, "metricsUrl": triton.metrics_url,
                           "rollout": {"steps": [{"weight": 100}]}}}}
    t0 = time.monotonic()
    k.apply(doc)
    st = k.wait(name, lambda s: s.get("phase") in ("Succeeded", "Failed", "Rejected", "RolledBack"), 1200,
                "the causal LM published")
    took = time.monotonic() - t0
    assert st["phase"] == "Succeeded", st.get("message")
    assert st["winner"] == "int8" and st["published"]["version"] == 1 and st["published"]["flavour"] == "genai", st
    assert st["rollout"]["state"] == "Promoted", st["rollout"]
    (int8,) = st["candidates"]
    assert int8["verdict"] == "passed" and 0 <= int8["perplexityIncrease"] <= 0.05, int8
    assert int8["tokenAgreement"] >= 0.9 and int8["decodeTokensPerS"] > 0, int8
    pod = core.list_namespaced_pod(ns, label_selector=f"lathe.dev/name={name}").items[0]
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    version = installed["repo"] / model / "1"
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "model.py"} <= {f.name for f in version.iterdir()}
    prompt = "Return a new list containing"
    want = greedy(version, prompt, 12)
    stream = generate_stream(triton.http_url, f"{model}_router",
                             {"text_input": prompt, "max_tokens": 12, "stream": True})
    assert stream.ids == want and stream.events == len(want), (stream.ids, want)
    print(f"real node: causal LM from kubectl apply to a served streaming version in {took:.1f}s; int8 "
          f"perplexity {int8['perplexityIncrease']:+.2%}, agreement {int8['tokenAgreement']:.3f}")
