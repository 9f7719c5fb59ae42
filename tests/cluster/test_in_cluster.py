"""Lathe the way a cluster runs it: the chart installed with the real Helm SDK, the operator as a
Deployment pod from the built operator image with its own ServiceAccount token and namespaced
RBAC, worker Jobs scheduled by kube-scheduler and run by the kubelet as real containers from the
built worker image (non-root, read-only root, dropped capabilities, cgroup limits, hostPath
PersistentVolumes, termination message read by the kubelet), publishing to a real Triton (a host
process on the node's bridge) and a judged canary under live traffic.

Nothing here goes through the node agent; tests/e2e runs the same chain through it, and both
print the apply-to-promoted wall time for comparison."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from e2e.node.fixture import NODE_IP
from e2e.triton.server import TritonServer
from tests.e2e.test_end_to_end import Cluster, assert_report_kept, canary_under_load, resource, triton_top1
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
        sample = make_digits(models / "digits")
        (models / "digits" / "corrupt.onnx").write_bytes(b"this is not an ONNX model" * 10)
        for name in (OPERATOR_NS, ns):
            core.create_namespace({"metadata": {"name": name}})
        _hostpath_claim(core, ns, "models", models)
        _hostpath_claim(core, ns, "triton-models", repo)
        _hostpath_claim(core, OPERATOR_NS, "triton-models", repo)

        triton = TritonServer(repo, workdir=tmp_path_factory.mktemp("cluster-triton"), host=NODE_IP)
        stack.callback(triton.stop)  # also when its start fails or is interrupted half-way
        triton.start()
        cfg = helm.Config(kubeconfig_path=str(cp.kubeconfig))
        stack.callback(cfg.close)
        values = {"image": {"pullPolicy": "Never"},
                  "worker": {"resources": WORKER_RESOURCES, "maxAttempts": 1, "benchSeconds": 6},
                  "watchNamespaces": [ns], "repositoryClaims": ["triton-models"],
                  "rolloutInterval": 1}  # as tests/e2e sets it: the two runs' wall times compare
        t0 = time.monotonic()
        try:
            release = cfg.install(str(CHART), RELEASE, values, namespace=OPERATOR_NS, wait="watcher", timeout=240)
            install_s = time.monotonic() - t0
            print(f"helm install (to a ready operator pod) took {install_s:.1f}s")
            yield {"cp": cp, "core": core, "api": api, "ns": ns, "sample": sample, "triton": triton, "repo": repo,
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

    # Generation 2: a canary of version 2 under live traffic, judged, promoted.
    st, load, canary_s = canary_under_load(k, e2e, sample, timeout=900)
    assert st["phase"] == "Succeeded", st.get("message")
    assert st["rollout"]["state"] == "Promoted" and st["rollout"]["stableVersion"] == 2
    assert load.failed == 0, load.errors[:5]
    print(f"real node: kubectl apply -> promoted v1 {first_s:.1f}s; spec change -> promoted canary v2 {canary_s:.1f}s")


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
