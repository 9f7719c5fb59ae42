"""`lathe operator`, as the chart's Deployment runs it (its args and env), in its own process, logged
in with a token of the chart's ServiceAccount and nothing else: it becomes ready (the probe
path), serves its metrics, takes a resource through two failed worker attempts (Jobs, pods, pod
logs, claims, status, Events) and its deletion (finalizer, Job clean-up), and its verbose log
shows no refusal. Run in both modes; namespaced, the resource lives in a watched namespace."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from e2e.controlplane.fixture import free_port, kill_process_group
from tests.chart.served import served_series
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
# The API server's RBAC refusal (403), a refused token (401), kopf's own words: not any "forbidden", which
# a logged resource's status can quote (a namespace being terminated refuses a Job with 403 too).
REFUSED = re.compile(r"forbidden: User |unauthorized|not enough permissions", re.IGNORECASE)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture(scope="module")
def operator(release, control_plane, node_agent, tmp_path_factory):
    work = tmp_path_factory.mktemp(release.name)
    kubeconfig = work / "sa.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "cp", "cluster": {"server": control_plane.url,
                                                "certificate-authority": str(control_plane.pki.ca_crt)}}],
        "users": [{"name": "sa", "user": {"token": release.token()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "cp", "user": "sa", "namespace": release.ns}}]}))
    health, metrics = free_port(), free_port()
    c = release.container
    assert c["args"][0] == "operator"
    args = [a for a in c["args"] if not a.startswith("--liveness=")]
    args += [f"--liveness=http://127.0.0.1:{health}/healthz", "--verbose"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update({e["name"]: e["value"] for e in c["env"]})
    env.update(KUBECONFIG=str(kubeconfig), LATHE_METRICS_PORT=str(metrics), LATHE_MAX_ATTEMPTS="2",
               LATHE_BACKOFF_SECONDS="1", LATHE_ROLLOUT_INTERVAL="1",
               LATHE_WORKER_COMMAND=f"{sys.executable} {ROOT / 'tests/operator/scripted_worker.py'}")
    log_path = work / "operator.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(BIN / "lathe"), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    op = {"proc": proc, "log": log_path, "health": f"http://127.0.0.1:{health}/healthz",
          "metrics": f"http://127.0.0.1:{metrics}/metrics", "work": work}
    try:
        wait_for(lambda: proc.poll() is not None or _get(op["health"])[0] == 200, 60, 0.2, "the operator's /healthz")
        assert proc.poll() is None, "operator exited:\n" + log_path.read_text()[-4000:]
        yield op
    finally:
        kill_process_group(proc, grace=30)
        print(f"operator log ({release.mode}) tail:\n" + log_path.read_text()[-3000:])


def test_ready_and_serving_metrics(operator):
    status, body = _get(operator["health"])
    assert status == 200 and "now" in json.loads(body)  # kopf's probe handler ran
    status, text = _get(operator["metrics"])  # what the chart's Service and ServiceMonitor scrape
    assert status == 200
    families = {f.name for f in text_string_to_metric_families(text)}
    assert set(served_series()) - families == set()  # every metric the dashboard may name is served


def test_a_resource_runs_and_is_deleted_with_only_these_grants(release, operator, k8s_client):
    ns = release.watched[0] if release.watched else release.other
    api, core, batch = client.CustomObjectsApi(k8s_client), client.CoreV1Api(k8s_client), client.BatchV1Api(k8s_client)
    core.create_namespaced_persistent_volume_claim(ns, {  # a pvc:// URI: the operator GETs the claim
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    script = operator["work"] / "fail.json"
    script.write_text(json.dumps({"exit": 1, "log": "boom"}))
    api.create_namespaced_custom_object("lathe.dev", "v1alpha1", ns, "modeloptimizations", {
        "apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": "digits"},
        "spec": {"model": {"uri": str(script)}, "data": {"validation": {"uri": "pvc://data/val.npz"}}}})

    def status():
        return api.get_namespaced_custom_object("lathe.dev", "v1alpha1", ns, "modeloptimizations",
                                                "digits").get("status") or {}
    st = wait_for(lambda: (s := status()).get("phase") == "Failed" and s, 120, 0.5, "phase Failed after 2 attempts")
    assert st["job"]["attempt"] == 2, st["job"]
    jobs = batch.list_namespaced_job(ns, label_selector="lathe.dev/name=digits").items
    assert len(jobs) == 2
    reasons = wait_for(lambda: {e.reason for e in core.list_namespaced_event(ns).items
                                if e.involved_object.name == "digits"} >= {"JobCreated", "JobFailed"}, 30,
                       what="the operator's Events")
    assert reasons

    api.delete_namespaced_custom_object("lathe.dev", "v1alpha1", ns, "modeloptimizations", "digits")

    def gone():
        try:
            status()
            return False
        except ApiException as e:
            return e.status == 404
    wait_for(gone, 60, 0.5, "the finalizer to be removed")
    wait_for(lambda: not [j for j in batch.list_namespaced_job(ns, label_selector="lathe.dev/name=digits").items
                          if not j.metadata.deletion_timestamp], 30, what="the Jobs deleted")

    # The operator's last word on the resource: kopf logs this (at --verbose) once the deletion is through, after
    # every call of the deletion path (our Events are posted synchronously, each logged with its status code);
    # only ModelOptimizations have deletion handlers, and this test makes one.
    def deletion_through():
        text = operator["log"].read_text()
        return bool(REFUSED.search(text)) or "Deleted, really deleted, and we are notified." in text
    wait_for(deletion_through, 30, 0.2, "kopf's last word on the deleted resource (or a refusal) in the operator's log")
    refused = [line for line in operator["log"].read_text().splitlines() if REFUSED.search(line)]
    # Namespaced mode too: the operator turns kopf's cluster-wide scanning off for exact namespaces.
    assert refused == [], "\n".join(refused)


def test_the_log_check_knows_a_real_refusal(release):
    """REFUSED above matches what a refusal of these grants looks like, taken from the real API server: a call
    the operator's ServiceAccount may not make (listing Nodes, in either mode)."""
    with release.cp.token_client(release.token()) as api, pytest.raises(ApiException) as denied:
        client.CoreV1Api(api).list_node()
    assert denied.value.status == 403 and REFUSED.search(str(denied.value)), str(denied.value)
