"""The chain's shared pieces for the tests that run it through the operator (tests/cluster on the real node,
tests/e2e on the node agent): kubectl and status polling, a load generator, the operator as a restartable
process, the digits resource, the report kept, Triton's top-1, a canary of generation 2 under load."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
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

    def settle(self, more: int = 3, timeout: float = 30) -> None:
        """Wait until `more` requests begun after this call have been answered (or failed): one request at a time,
        so the one in flight now has then been counted."""
        seen = self.ok + self.failed
        wait_for(lambda: self.ok + self.failed >= seen + more or not self.is_alive(), timeout, 0.02,
                 f"{more} more requests answered")


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


