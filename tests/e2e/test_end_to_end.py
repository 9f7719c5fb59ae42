"""The whole chain, with nothing stubbed: `kubectl apply` a ModelOptimization -> the operator (its
own process, `lathe operator`) -> a worker Job -> the real `lathe worker` in a pod run by the node
agent (real torch/ONNX Runtime on a CNN trained here) -> version N published into a Triton model
repository on a "PVC" -> the real Triton server -> a judged canary of version N+1 under live
traffic -> promoted. A corrupt model ends Failed/InvalidInput through the same path."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from kubernetes import client

from e2e.controlplane.fixture import free_port, kill_process_group
from e2e.triton.server import TritonServer
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"


class Cluster:
    def __init__(self, api_client, kubeconfig, ns):
        self.api = client.CustomObjectsApi(api_client)
        self.kubeconfig, self.ns = str(kubeconfig), ns

    def kubectl(self, *args, stdin: str | None = None) -> str:
        out = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", self.kubeconfig, "-n", self.ns, *args],
                             input=stdin, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"kubectl {' '.join(args)} failed: {out.stderr}"
        return out.stdout

    def apply(self, doc: dict) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))

    def status(self, name: str) -> dict:
        return self.api.get_namespaced_custom_object("lathe.dev", "v1alpha1", self.ns, "modeloptimizations",
                                                     name).get("status") or {}

    def wait(self, name: str, cond, timeout: float, what: str) -> dict:
        try:
            return wait_for(lambda: (s := self.status(name)) and cond(s) and s, timeout, interval=0.5, what=what)
        except AssertionError as e:
            st = self.status(name)
            head = {k: st.get(k) for k in ("observedGeneration", "phase", "stage", "message", "winner", "rollout")}
            raise AssertionError(f"{e}; status: {json.dumps(head, indent=1)[:6000]}") from None


class Load(threading.Thread):
    """Steady requests to the router model; records every outcome."""

    def __init__(self, url: str, model: str, x: np.ndarray):
        super().__init__(daemon=True)
        import tritonclient.http as http

        self.http, self.client = http, http.InferenceServerClient(url)
        self.model, self.x = model, x
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self):
        i = 0
        while not self.stop.is_set():
            x = self.x[i % len(self.x)][None]
            inp = self.http.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            try:
                self.client.infer(self.model, [inp])
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - counted and reported by the test
                self.failed += 1
                self.errors.append(str(e)[:200])
            i += 1
            time.sleep(0.01)


class Operator:
    """`lathe operator` in its own process (what the chart's Deployment runs), restartable; its
    output appended to one log across restarts."""

    def __init__(self, env: dict, ns: str, log_path: Path):
        self.env, self.ns, self.log_path = env, ns, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([str(BIN / "lathe"), "operator", "--namespace", self.ns,
                                          "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            kill_process_group(proc, grace=30)


@pytest.fixture(scope="module")
def e2e(control_plane, k8s_client, node_agent, tmp_path_factory):
    from lathe.worker.samples import make_digits

    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(k8s_client)
    core.create_namespace({"metadata": {"name": ns}})
    for claim in ("models", "triton-models", "captures"):
        core.create_namespaced_persistent_volume_claim(ns, {
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    pvc = Path(node_agent.root) / "pvc" / ns
    sample = make_digits(pvc / "models" / "digits")
    (pvc / "models" / "digits" / "corrupt.onnx").write_bytes(b"this is not an ONNX model" * 10)
    repo = pvc / "triton-models"
    repo.mkdir(parents=True)
    work = tmp_path_factory.mktemp("e2e")
    triton = TritonServer(repo, workdir=work / "triton")
    metrics_port = free_port()
    env = dict(os.environ, KUBECONFIG=str(control_plane.kubeconfig),
               LATHE_WORKER_COMMAND=f"{BIN / 'lathe'} worker",
               # The claims the operator mounts (the chart's repositoryClaims): the repository, where captures go
               LATHE_PVC_MOUNTS=json.dumps({"triton-models": str(repo), "captures": str(pvc / "captures")}),
               LATHE_METRICS_PORT=str(metrics_port), LATHE_ROLLOUT_INTERVAL="1", LATHE_MAX_ATTEMPTS="1",
               # The chain is under test here, not the speed (minSpeedup 0): a short benchmark.
               LATHE_BENCH_SECONDS="3")
    op = Operator(env, ns, work / "operator.log")
    # Both servers are stopped on every path: a failed start of either (a missing binary, a port
    # taken, an interrupt) included; stop() of one not started does nothing.
    with contextlib.ExitStack() as stack:
        stack.callback(triton.stop)  # callbacks run last first: the operator, its log, then Triton
        stack.callback(lambda: print("operator log tail:\n" + (work / "operator.log").read_text()[-4000:])
                       if (work / "operator.log").exists() else None)
        stack.callback(op.stop)
        triton.start()
        op.start()
        try:
            yield {"ns": ns, "cluster": Cluster(k8s_client, control_plane.kubeconfig, ns), "sample": sample,
                   "triton": triton, "repo": repo, "operator": op, "operator_log": work / "operator.log",
                   "metrics_port": metrics_port, "batch": client.BatchV1Api(k8s_client), "tmp": work,
                   "captures": pvc / "captures"}
        finally:
            try:  # what a user would see at the end (also the README's example output)
                print("kubectl get mopt:\n" + Cluster(k8s_client, control_plane.kubeconfig, ns).kubectl("get", "mopt"))
            except (AssertionError, OSError, subprocess.SubprocessError) as e:
                print(e)


def resource(name: str, e2e: dict, *, model: str = "pvc://models/digits/digits_cnn.pt", fmt="torchscript",
             candidates=None, budget=0.02, rollout=None, triton_url: str | None = None,
             calibration: str = "pvc://models/digits/digits_calibration.npz") -> dict:
    triton = e2e["triton"]
    publish = {"repository": "pvc://triton-models/", "modelName": "digits", "flavour": "python",
               "tritonUrl": triton_url or triton.http_url,
               "metricsUrl": triton.metrics_url,
               "rollout": rollout or {"steps": [{"weight": 30, "pauseSeconds": 4, "minRequests": 20, "mirror": 50},
                                                {"weight": 100, "pauseSeconds": 0, "minRequests": 0}],
                                      "analysis": {"maxErrorRate": 0.0, "maxLatencyRatio": 5.0,
                                                   "minComparedRequests": 20}}}
    return {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": name},
            "spec": {
                "model": {"uri": model, "format": fmt,
                          "inputs": [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]},
                "task": {"type": "classification"},
                "data": {"calibration": {"uri": calibration},
                         "validation": {"uri": "pvc://models/digits/digits_validation.npz"}},
                "target": {"runtimes": ["onnxruntime"], "batchSizes": [1]},
                "candidates": candidates or [
                    {"name": "optimized", "passes": [{"type": "graph-optimize", "level": "all"}]},
                    {"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static"}]}],
                "budget": {"maxAccuracyDrop": budget, "minSpeedup": 0.0},
                "publish": publish}}


def assert_report_kept(k: Cluster, st: dict, name: str, tmp: Path) -> None:
    """The full result outlived the worker pod: in the resource's ConfigMap (read from the pod's
    log through the API server), beside the published version, and readable by `lathe report`."""
    assert st.get("reportConfigMap") == f"{name}-report", st.get("conditions")
    cond = {c["type"]: c for c in st["conditions"]}["ReportKept"]
    assert cond["status"] == "True", cond
    version = st["published"]["version"]
    assert f"pvc://triton-models/digits/{version}/report.html" in st["reportCopies"], st["reportCopies"]
    html = tmp / f"{name}-report.html"
    out = subprocess.run([str(BIN / "lathe"), "report", name, "-n", k.ns, "--html", str(html)],
                         env={**os.environ, "KUBECONFIG": k.kubeconfig}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"result from ConfigMap {name}-report" in out.stdout and f"{st['winner']} *" in out.stdout, out.stdout
    text = html.read_text()
    assert 'class="box"' in text and 'class="interval"' in text  # distributions: the details came along


def triton_top1(triton: TritonServer, model: str, sample: dict) -> float:
    import tritonclient.http as http

    data = np.load(sample["validation"])
    x, y = data["input"].astype(np.float32), data["labels"]
    c = http.InferenceServerClient(triton.http_url)
    name = c.get_model_metadata(model)["outputs"][0]["name"]
    outs = []
    for i in range(0, len(x), 8):  # the published config's max_batch_size
        inp = http.InferInput("input", list(x[i:i + 8].shape), "FP32")
        inp.set_data_from_numpy(x[i:i + 8])
        outs.append(c.infer(model, [inp]).as_numpy(name))
    return float((np.concatenate(outs).argmax(1) == y).mean())


GENERATION_2 = [{"name": "int8-dynamic", "passes": [{"type": "quantize", "precision": "int8", "mode": "dynamic"}]},
                {"name": "optimized", "passes": [{"type": "graph-optimize", "level": "all"}]}]


def canary_under_load(k: Cluster, e2e: dict, sample: dict, timeout: float, capture: dict | None = None
                      ) -> tuple[dict, Load, float]:
    """Generation 2 of "digits" while a client calls the router: returns the decided status, the
    load's record and the seconds from the apply to the decision. `capture`: the rollout's capture block."""
    load = Load(e2e["triton"].http_url, "digits_router", np.load(sample["validation"])["input"])
    load.start()
    try:
        # The router answers before the apply: its first success, not a fixed 2 s pause.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: load.ok > 0, 30, interval=0.05, what="a first answer from the router")
        assert load.ok > 0, load.errors[:3]
        t0 = time.monotonic()
        rollout = None
        if capture:
            rollout = resource("digits", e2e)["spec"]["publish"]["rollout"] | {"capture": capture}
        k.apply(resource("digits", e2e, candidates=GENERATION_2, rollout=rollout))
        k.wait("digits", lambda s: s.get("observedGeneration") == 2 and s.get("phase") == "RollingOut", timeout,
               "canary of version 2 started")
        st = k.wait("digits", lambda s: s.get("observedGeneration") == 2 and s.get("phase") != "RollingOut"
                    and s.get("phase") not in ("Optimizing", "Pending"), timeout, "canary decided")
        return st, load, time.monotonic() - t0
    finally:
        load.stop.set()
        load.join(10)


def test_apply_optimize_publish_serve_then_canary(e2e):
    k, triton, sample = e2e["cluster"], e2e["triton"], e2e["sample"]
    # 1. First resource: nothing served yet, so version 1 is promoted directly.
    t0 = time.monotonic()
    k.apply(resource("digits", e2e))
    st = k.wait("digits", lambda s: s.get("phase") in ("Succeeded", "Failed", "Rejected", "RolledBack"), 600,
                "digits v1 done")
    first_s = time.monotonic() - t0
    assert st["phase"] == "Succeeded", st.get("message")
    win = next(c for c in st["candidates"] if c["name"] == st["winner"])
    assert win["verdict"] == "passed" and win["accuracyDrop"] <= 0.02
    assert st["published"]["version"] == 1 and st["published"]["modelName"] == "digits"
    assert st["rollout"]["state"] == "Promoted"
    assert (e2e["repo"] / "digits" / "1").is_dir()
    # Triton really serves what the worker measured: same top-1 on the same validation data. Status
    # rounds to 5 decimals; one sample of the validation set (hundreds) moves top-1 far more than that.
    assert triton_top1(triton, "digits", sample) == pytest.approx(win["accuracy"], abs=1e-5)
    table = k.kubectl("get", "mopt")
    print(f"kubectl get mopt after generation 1:\n{table}")
    assert "digits" in table and "Succeeded" in table and st["winner"] in table and st["speedup"] in table
    assert (e2e["repo"] / "digits" / "1" / "report.html").is_file()
    assert_report_kept(k, st, "digits", e2e["tmp"])

    # 2. A spec change (generation 2) publishes version 2 and rolls it out as a canary under traffic.
    capture = {"enabled": True, "samplePercent": 50, "maxSamples": 40, "uri": "pvc://captures/digits"}
    st, load, canary_s = canary_under_load(k, e2e, sample, timeout=600, capture=capture)
    assert st["phase"] == "Succeeded", st.get("message")
    ro = st["rollout"]
    assert ro["state"] == "Promoted" and ro["stableVersion"] == 2
    steps = [h for h in ro["history"] if h["decision"] == "Passed"]
    assert steps and steps[0]["weight"] == 30 and steps[0]["requests"]["2"] >= 20, ro["history"]
    # Half the step's requests were also answered by the other version and the answers compared: the
    # INT8 canary agrees with stable above the floor the budget (0.02) sets, 1 - 2 x 0.02.
    assert steps[0]["compared"] >= 20 and steps[0]["agreement"] >= 0.96, steps[0]
    assert load.failed == 0, load.errors[:5]
    # Production samples: half of what stable (version 1) answered, capped, written where the spec said,
    # and loadable as a calibration set of the model; the validation inputs the client sent come from the
    # calibration set's distribution, so they are judged representative.
    cap = ro["capture"]
    assert cap["state"] == "Complete" and 0 < cap["samples"] <= 40, cap
    assert cap["dataset"] == "pvc://captures/digits/production.npz", cap
    with np.load(e2e["captures"] / "digits" / "production.npz") as z:
        assert sorted(z.files) == ["input"] and z["input"].shape[1:] == (1, 8, 8) and len(z["input"]) == cap["samples"]
        sent = {r.tobytes() for r in np.load(sample["validation"])["input"].astype(np.float32)}
        assert all(r.tobytes() in sent for r in z["input"])
    assert cap["report"]["calibrationSamples"] > 0 and cap["report"]["representative"] is True, cap["report"]
    from tritonclient.http import InferenceServerClient

    c = InferenceServerClient(f"127.0.0.1:{triton.http_port}")
    assert c.is_model_ready("digits", "2") and not c.is_model_ready("digits", "1")
    wanted = {"JobCreated", "Published", "RolloutStarted", "Promoted", "SpecChanged", "CaptureComplete"}
    wait_for(lambda: wanted <= {e["reason"] for e in json.loads(k.kubectl("get", "events", "-o", "json"))["items"]},
             timeout=30, interval=0.5, what=f"events {wanted}")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{e2e['metrics_port']}/metrics").read().decode()
    assert "lathe_jobs_created_total 2.0" in metrics
    # Compared with tests/cluster (the same chain on a real kubelet) in the docs.
    print(f"node agent: kubectl apply -> promoted v1 {first_s:.1f}s; spec change -> promoted canary v2 {canary_s:.1f}s")


def test_spec_change_mid_canary_sends_traffic_back_to_stable(e2e):
    # Continues from the test above: version 2 is stable. Generation 3, calibrated on the production
    # samples generation 2's canary kept, publishes a canary and holds it at 30% (long pause);
    # generation 4 supersedes it before the analysis ends.
    k, triton, sample = e2e["cluster"], e2e["triton"], e2e["sample"]
    from tritonclient.http import InferenceServerClient

    c = InferenceServerClient(f"127.0.0.1:{triton.http_port}")
    assert c.is_model_ready("digits", "2")
    held = {"steps": [{"weight": 30, "pauseSeconds": 600, "minRequests": 1}, {"weight": 100}],
            "analysis": {"maxErrorRate": 0.0, "maxLatencyRatio": 5.0}}
    load = Load(f"127.0.0.1:{triton.http_port}", "digits_router", np.load(sample["validation"])["input"])
    load.start()
    try:
        k.apply(resource("digits", e2e, rollout=held, calibration="pvc://captures/digits/production.npz", candidates=[
            {"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static"}]}]))
        st = k.wait("digits", lambda s: s.get("observedGeneration") == 3
                    and (s.get("rollout") or {}).get("state") == "Progressing"
                    and (s["rollout"].get("weights") or {}).get(str(s["rollout"]["canaryVersion"])) == 30,
                    300, "canary at 30%")
        canary = st["rollout"]["canaryVersion"]
        assert st["rollout"]["stableVersion"] == 2 and canary != 2 and c.is_model_ready("digits", str(canary))
        # Its only candidate, static INT8, was calibrated on the capture (a missing or unreadable
        # calibration file ends the run with a data error instead) and met the budget.
        assert st["winner"] == "int8-static" and st["candidates"][0]["verdict"] == "passed", st["candidates"]
        # Generation 4 also points at another Triton (nothing listens there): the canary must be undone
        # on the Triton it started on, which the rollout status recorded.
        k.apply(resource("digits", e2e, rollout=held, model="pvc://models/digits/corrupt.onnx", fmt="onnx",
                         triton_url=f"127.0.0.1:{free_port()}"))
        st = k.wait("digits", lambda s: s.get("observedGeneration") == 4
                    and s.get("phase") in ("Failed", "Succeeded"), 300, "generation 4 done")
        time.sleep(1)  # requests in flight during the swap are counted too
    finally:
        load.stop.set()
        load.join(10)
    ro = st["rollout"]
    assert ro["state"] == "RolledBack" and "generation 4 supersedes" in ro["reason"], ro
    assert ro["publish"]["tritonUrl"] == f"127.0.0.1:{triton.http_port}"
    assert f"canary of version {canary}" in ro["reason"] and "back to version 2" in ro["reason"]
    assert c.is_model_ready("digits", "2") and not c.is_model_ready("digits", str(canary))
    assert load.failed == 0 and load.ok > 0, load.errors[:5]
    assert st["phase"] == "Failed" and st["job"]["exitCode"] == 2  # generation 4's corrupt model
    events = json.loads(k.kubectl("get", "events", "-o", "json"))["items"]
    assert any(e["reason"] == "RolloutAbandoned" and f"version {canary}" in e["message"] for e in events)


def test_corrupt_model_is_refused_with_a_clear_reason(e2e):
    k = e2e["cluster"]
    versions = sorted(p.name for p in (e2e["repo"] / "digits").iterdir())
    k.apply(resource("corrupt", e2e, model="pvc://models/digits/corrupt.onnx", fmt="onnx"))
    st = k.wait("corrupt", lambda s: s.get("phase") in ("Failed", "Succeeded"), 300, "corrupt model refused")
    assert st["phase"] == "Failed" and st["job"]["exitCode"] == 2
    cond = {c["type"]: c for c in st["conditions"]}["Validated"]
    assert cond["reason"] == "InvalidInput" and "corrupt.onnx" in cond["message"]
    assert sorted(p.name for p in (e2e["repo"] / "digits").iterdir()) == versions  # nothing published


def test_operator_restart_mid_canary_continues_the_same_rollout(e2e):
    """The operator restarted in the middle of a canary carries on from status: the same step (its
    start kept), the same canary, the same Job, nothing published again, traffic unbroken; the step
    ends `pause` after it began, not `pause` after the restart.

    Its own resource and model, so it needs no other test before it; objective size (the int8
    candidate is the smallest): what is tested is the restart, not the speed of this busy box."""
    k, triton, sample = e2e["cluster"], e2e["triton"], e2e["sample"]
    from tritonclient.http import InferenceServerClient

    name, model, pause, down = "restart", "digits_restart", 30, 8

    def doc(candidate: dict, rollout=None) -> dict:
        d = resource(name, e2e, candidates=[candidate], rollout=rollout)
        d["spec"]["objective"] = "size"
        d["spec"]["publish"]["modelName"] = model
        return d

    def jobs() -> list[str]:
        return sorted(j.metadata.uid for j in e2e["batch"].list_namespaced_job(
            e2e["ns"], label_selector=f"lathe.dev/name={name}").items)

    def when(t: str) -> datetime:
        return datetime.fromisoformat(t.replace("Z", "+00:00"))

    # Version 1, served at once (nothing served before).
    k.apply(doc({"name": "optimized", "passes": [{"type": "graph-optimize", "level": "all"}]}))
    st = k.wait(name, lambda s: s.get("phase") in ("Succeeded", "Failed", "Rejected", "RolledBack"), 300,
                "version 1 done")
    assert st["phase"] == "Succeeded" and st["published"]["version"] == 1, st.get("message")
    c = InferenceServerClient(f"127.0.0.1:{triton.http_port}")
    held = {"steps": [{"weight": 30, "pauseSeconds": pause, "minRequests": 1}, {"weight": 100}],
            "analysis": {"maxErrorRate": 0.0, "maxLatencyRatio": 5.0}}
    load = Load(f"127.0.0.1:{triton.http_port}", f"{model}_router", np.load(sample["validation"])["input"])
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
                    300, "canary at 30%")
        ro, job, published = st["rollout"], st["job"], st["published"]
        assert ro["stableVersion"] == 1 and ro["canaryVersion"] == published["version"] == 2, ro
        (measuring,) = [h for h in ro["history"] if h["decision"] == "Measuring"]
        step_start = when(measuring["time"])
        versions, uids = sorted(p.name for p in (e2e["repo"] / model).iterdir()), jobs()
        e2e["operator"].stop()
        stopped = datetime.now(UTC)
        assert (stopped - step_start).total_seconds() < pause - down - 5, "the restart must land inside the step"
        time.sleep(down)
        restarted = datetime.now(UTC)
        e2e["operator"].start()
        st = k.wait(name, lambda s: (s.get("rollout") or {}).get("state") != "Progressing", 120,
                    "canary decided after the restart")
        time.sleep(1)  # requests in flight during the swap are counted too
    finally:
        load.stop.set()
        load.join(10)
    assert st["observedGeneration"] == 2 and st["phase"] == "Succeeded", st.get("message")
    after = st["rollout"]
    assert after["state"] == "Promoted" and after["stableVersion"] == 2, after
    assert st["published"] == published
    assert {f: st["job"][f] for f in ("name", "attempt", "generation")} == {
        f: job[f] for f in ("name", "attempt", "generation")}
    assert jobs() == uids  # the worker did not run again
    assert sorted(p.name for p in (e2e["repo"] / model).iterdir()) == versions  # nothing published again
    step = [h for h in after["history"] if h["step"] == 0 and h["weight"] == 30][-1]
    decided = when(step["time"])
    # Resumed, the step passes about `pause` after it began; measured afresh by the new operator,
    # not before `pause` after the restart (`down` seconds and more after the step began).
    assert step["decision"] == "Passed", after["history"]
    assert (decided - step_start).total_seconds() >= pause, (step_start, decided)
    assert decided < restarted + timedelta(seconds=pause - 3), (step_start, stopped, restarted, decided)
    assert c.is_model_ready(model, "2") and not c.is_model_ready(model, "1")
    assert load.failed == 0 and load.ok > 0, load.errors[:5]
