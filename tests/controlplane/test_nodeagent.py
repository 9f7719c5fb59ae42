"""The local node agent (e2e/nodeagent/agent.py) runs Job pods as processes and reports back."""

from __future__ import annotations

import os

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.nodeagent.agent import MANAGED_BY, pod_log
from tests.waiting import wait_for

SCRIPT = (
    "import os, sys\n"
    "open(sys.argv[1], 'w').write(os.environ['GREETING'] + ' from ' + os.environ['POD_NAME'])\n"
    "open('/data/out.txt', 'w').write('written')\n"
    "print('stdout line', flush=True)\n"
    "print('stderr line', file=sys.stderr)\n"
    "sys.exit(int(sys.argv[2]))\n"
)


def job_body(name: str, exit_code: int, managed_by: str | None) -> dict:
    spec = {
        "backoffLimit": 0,
        "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": "ignored:latest",
                "command": ["python", "-c", SCRIPT],
                "args": ["/dev/termination-log", str(exit_code)],
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }},
    }
    if managed_by:
        spec["managedBy"] = managed_by
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def job_condition(job, typ):
    for c in (job.status.conditions or []) if job.status else []:
        if c.type == typ and c.status == "True":
            return c
    return None


@pytest.mark.parametrize("controller", ["kube-controller-manager", "nodeagent"])
@pytest.mark.parametrize("exit_code", [0, 3])
def test_job_runs_as_local_process(control_plane, k8s_client, node_agent, namespace, controller, exit_code):
    """A Job's container writes its termination log and exits; pod, container and Job status follow."""
    # Without kube-controller-manager (LATHE_CONTROLPLANE_KCM=0) the agent mirrors every Job ("all").
    batch, core = client.BatchV1Api(k8s_client), client.CoreV1Api(k8s_client)
    name = f"{'kcm' if controller != 'nodeagent' else 'agent'}-exit{exit_code}"
    batch.create_namespaced_job(namespace, job_body(name, exit_code,
                                                    MANAGED_BY if controller == "nodeagent" else None))

    final = "Complete" if exit_code == 0 else "Failed"
    job = wait_for(lambda: (lambda j: j if job_condition(j, final) else None)(
        batch.read_namespaced_job(name, namespace)), timeout=60.0, interval=0.2, what=f"Job {name} {final}")

    pods = core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={name}").items
    assert len(pods) == 1
    pod = pods[0]
    assert pod.metadata.labels["job-name"] == name
    assert pod.metadata.labels["batch.kubernetes.io/controller-uid"] == job.metadata.uid
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("Job", name, job.metadata.uid, True)
    assert pod.spec.node_name == "lathe-node"
    assert pod.status.phase == ("Succeeded" if exit_code == 0 else "Failed")
    term = pod.status.container_statuses[0].state.terminated
    assert term.exit_code == exit_code
    assert term.reason == ("Completed" if exit_code == 0 else "Error")
    assert term.message == f"hello from {pod.metadata.name}"

    if exit_code == 0:
        assert job.status.succeeded == 1 and not job.status.failed
        assert job.status.completion_time is not None
        assert job_condition(job, "SuccessCriteriaMet")
    else:
        assert job.status.failed == 1 and not job.status.succeeded
        assert job_condition(job, "Failed").reason == "BackoffLimitExceeded"
    assert job.status.start_time is not None
    assert not job.status.active

    logs = pod_log(pod)
    assert "stdout line" in logs and "stderr line" in logs, logs
    out = os.path.join(pod.metadata.annotations["nodeagent.lathe.dev/dir"], "volumes", "data", "out.txt")
    assert open(out).read() == "written"


def test_deleting_a_running_pod_kills_its_process(k8s_client, node_agent, namespace):
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "containers": [{
            "name": "main", "image": "ignored", "command": ["python", "-c", "import time; time.sleep(300)"]}]},
    })

    def running():
        p = core.read_namespaced_pod("sleeper", namespace)
        st = (p.status.container_statuses or [None])[0] if p.status else None
        return p if p.status.phase == "Running" and st and st.state.running else None
    pod = wait_for(running, timeout=60.0, interval=0.2, what="sleeper Running")
    assert [c.type for c in pod.status.conditions if c.status == "True"].count("Ready") == 1
    pid = int(pod.status.container_statuses[0].container_id.split("://")[1])
    os.kill(pid, 0)  # alive

    core.delete_namespaced_pod("sleeper", namespace)

    def gone():
        try:
            core.read_namespaced_pod("sleeper", namespace)
            return False
        except ApiException as e:
            return e.status == 404
    wait_for(gone, timeout=30, interval=0.2, what="sleeper deleted")
    with pytest.raises(ProcessLookupError):
        wait_for(lambda: os.kill(pid, 0) or False, timeout=5, interval=0.2, what="process to exit")


SA_SCRIPT = (
    "from kubernetes import client, config\n"
    "config.load_kube_config()\n"
    "ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()\n"
    "try:\n"
    "    client.CoreV1Api().list_namespaced_pod(ns)\n"
    "    msg = 'allowed'\n"
    "except client.exceptions.ApiException as e:\n"
    "    msg = f'status {e.status}'\n"
    "open('/dev/termination-log', 'w').write(msg)\n"
)


def test_pod_acts_as_its_service_account(control_plane, k8s_client, node_agent, namespace):
    """The pod's process talks to the API server as system:serviceaccount:<ns>:default (no rights: 403)."""
    if os.environ.get("LATHE_CONTROLPLANE_KCM") == "0":
        pytest.skip("needs kube-controller-manager (ServiceAccounts and their token volume), disabled by "
                    "LATHE_CONTROLPLANE_KCM=0")
    assert control_plane.has_controller_manager, "kube-controller-manager was not built or did not start"
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sa-user"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "ignored", "command": ["python", "-c", SA_SCRIPT]}]},
    })

    def finished():
        p = core.read_namespaced_pod("sa-user", namespace)
        return p if p.status.phase in ("Succeeded", "Failed") else None
    pod = wait_for(finished, timeout=60.0, interval=0.2, what="sa-user to finish")
    term = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, term.exit_code, term.message) == ("Succeeded", 0, "status 403"), pod_log(pod)


def _finished(core, name, namespace):
    p = core.read_namespaced_pod(name, namespace)
    return p if p.status and p.status.phase in ("Succeeded", "Failed") else None


def _python_pod(name: str, script: str) -> dict:
    """A one-container pod the agent runs as `python -c script` (its image is ignored)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "ignored", "command": ["python", "-c", script]}]}}


def test_pod_log_through_the_api_server(k8s_client, node_agent, namespace):
    """kube-apiserver proxies pods/log to the agent's log server, as it does to a kubelet."""
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_pod(namespace, _python_pod("talker", "for i in range(1, 6): print(f'line {i}', flush=True)"))
    pod = wait_for(lambda: _finished(core, "talker", namespace), timeout=60.0, interval=0.2, what="talker to finish")
    assert pod.status.phase == "Succeeded", pod_log(pod)

    lines = "".join(f"line {i}\n" for i in range(1, 6))
    assert core.read_namespaced_pod_log("talker", namespace) == lines
    assert core.read_namespaced_pod_log("talker", namespace, container="main", tail_lines=2) == "line 4\nline 5\n"
    assert core.read_namespaced_pod_log("talker", namespace, limit_bytes=6) == "line 1"
    assert core.read_namespaced_pod_log("talker", namespace, tail_lines=2, limit_bytes=3) == "lin"

    # The API server itself rejects a container the pod spec lacks (400), before asking the node.
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod_log("talker", namespace, container="nope")
    assert err.value.status in (400, 404) and "nope" in err.value.body, err.value

    # The agent's own answers (what a kubelet says): 404 for pods and containers it does not have.
    import ssl
    import urllib.error
    import urllib.request
    port = core.read_node("lathe-node").status.daemon_endpoints.kubelet_endpoint.port
    assert port > 0
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # self-signed, as the API server accepts it
    for path in (f"{namespace}/no-such-pod/main", f"{namespace}/talker/nope"):
        with pytest.raises(urllib.error.HTTPError) as http_err:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/containerLogs/{path}", context=ctx, timeout=10)
        assert http_err.value.code == 404 and b"not found" in http_err.value.read()


def test_followed_pod_log_ends_with_the_container(k8s_client, node_agent, namespace):
    """``follow=true`` streams what a running container prints and ends when it exits."""
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_pod(namespace, _python_pod(
        "follower", "import time; print('a', flush=True); time.sleep(1.5); print('b')"))
    wait_for(lambda: (lambda p: p.status and p.status.phase == "Running")(core.read_namespaced_pod("follower", namespace)),
             timeout=60.0, interval=0.1, what="follower Running")
    assert core.read_namespaced_pod_log("follower", namespace, follow=True, _request_timeout=30) == "a\nb\n"
    # The stream ends when the container exits; the pod's phase reaches the API server a moment later
    # (the agent's status sync), which a busy box showed: wait for it rather than read it at once.
    wait_for(lambda: _finished(core, "follower", namespace), timeout=30.0, interval=0.1, what="follower finished")
