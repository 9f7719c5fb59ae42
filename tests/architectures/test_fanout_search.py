"""A search split over build Jobs (spec.search.parallelism 2) on a cluster of three labelled Nodes.

Components, all real: the control plane (etcd, kube-apiserver, kube-controller-manager's Job controller and
garbage collector), kube-scheduler placing every pod, the operator (kopf, in-process), three node agents
(e2e/nodeagent/agent.py --no-bind: they bind nothing and run the pods the scheduler placed on their Node:
`build-1`, `build-2` labelled pool=build, `target-1` labelled pool=target), and the real `lathe worker` from
this checkout on the digits CNN (torch, ONNX Runtime). The hand-over goes through a folder every agent sees
(spec.artifacts): the three Nodes are processes on one machine.

One resource with parallelism 1 and the same resource with parallelism 2 run side by side; during the split
one, build Job 1 is evicted mid-run (after its first candidate was handed over) and the operator is stopped,
then started again after the other build Job finished. What must hold: build Jobs on the builders' Nodes, the
benchmark Job and the single Job on the target's; exactly the Jobs the plan names (no duplicate after the
restart); every candidate built exactly once (the retried attempt reuses what the evicted one handed over);
the same verdicts and accuracies as the single Job; one published version. The benchmark is 1 s: the
fan-out is under test here, not the speed (minSpeedup 0)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
from pathlib import Path

import pytest
from kubernetes import client

from e2e.controlplane.fixture import free_port
from e2e.nodeagent.agent import AgentProcess
from lathe.api.spec import GROUP, PLURAL, VERSION
from tests.architectures.conftest import operator_with
from tests.waiting import wait_for

BIN = Path(sys.executable).parent
NODES = {"build-1": "build", "build-2": "build", "target-1": "target"}
CANDIDATES = [
    {"name": "ort-all", "passes": [{"type": "graph-optimize", "level": "all"}]},
    {"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static",
                                        "perChannel": True}]},
    {"name": "int8-dynamic", "passes": [{"type": "quantize", "precision": "int8", "mode": "dynamic"}]},
    {"name": "ort-basic", "passes": [{"type": "graph-optimize", "level": "basic"}]},
    {"name": "int8-static-tensor", "passes": [{"type": "quantize", "precision": "int8", "mode": "static"}]},
]
# the split (lathe.worker.shards): shard 1 int8-static, ort-all, ort-basic; shard 2 int8-static-tensor, int8-dynamic
SHARD_1 = ["int8-static", "ort-all", "ort-basic"]


@pytest.fixture(scope="module")
def nodes(control_plane, k8s_client, scheduler, tmp_path_factory):
    core = client.CoreV1Api(k8s_client)
    greedy = core.list_node(label_selector="node.lathe.dev/agent").items
    if greedy:
        pytest.fail(f"a node agent ({greedy[0].metadata.name}) that binds every pod runs already: run "
                    "tests/architectures in its own pytest session", pytrace=False)
    agents = []
    try:
        for name, pool in NODES.items():
            agent = AgentProcess(control_plane.kubeconfig, tmp_path_factory.mktemp(name), node_name=name,
                                 manage_jobs="off", extra_args=["--no-bind", "--label", f"pool={pool}"])
            agents.append(agent)
            agent.start()
        yield {a.node_name: a for a in agents}
    finally:
        for a in agents:
            a.stop()
        for name in NODES:
            try:
                core.delete_node(name)
            except client.ApiException as e:
                if e.status != 404:
                    raise


@pytest.fixture(scope="module")
def operator_env(kubeconfig):
    return {"LATHE_METRICS_PORT": str(free_port()), "LATHE_WORKER_COMMAND": f"{BIN / 'lathe'} worker",
            "LATHE_BENCH_SECONDS": "1", "LATHE_MAX_ATTEMPTS": "2", "LATHE_BACKOFF_SECONDS": "1",
            "LATHE_ROLLOUT_INTERVAL": "1", "LATHE_PROGRESS_INTERVAL": "2",
            # three pods on a 2-core machine at once: requests that let the scheduler place them
            "LATHE_CPU_RESOURCES": json.dumps({"requests": {"cpu": "100m", "memory": "256Mi"}})}


def resource(name, digits, tmp_path, parallelism):
    spec = {"model": {"uri": str(digits["model"]), "format": digits["format"], "inputs": digits["inputs"]},
            "task": {"type": "classification"},
            "data": {"calibration": {"uri": str(digits["calibration"])},
                     "validation": {"uri": str(digits["validation"])}},
            "target": {"runtimes": ["onnxruntime"], "batchSizes": [1], "nodeSelector": {"pool": "target"}},
            "candidates": CANDIDATES, "budget": {"maxAccuracyDrop": 0.02, "minSpeedup": 0},
            "artifacts": str(tmp_path / f"artifacts-{name}"),
            "publish": {"repository": str(tmp_path / f"repo-{name}"), "modelName": "digits"}}
    if parallelism > 1:
        spec["search"] = {"parallelism": parallelism, "builders": {"nodeSelector": {"pool": "build"}}}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelOptimization", "metadata": {"name": name},
            "spec": spec}


def builds_per_job(agents, ns) -> dict[str, tuple[list[str], list[str]]]:
    """Job name -> (candidates its pods built, candidates they reused from an earlier attempt's hand-over), from
    every worker pod's log on every node ('candidate X built', 'candidate X: reusing ...')."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for agent in agents.values():
        for log in (Path(agent.root) / "pods").glob(f"{ns}_*/worker.log"):
            job = re.sub(r"-[a-z0-9]{5}$", "", log.parent.name.split("_")[1])  # the pod's name less its suffix
            text = log.read_text()
            built, reused = out.setdefault(job, ([], []))
            built += re.findall(r"lathe\.worker:? candidate (\S+) built: ", text)
            reused += re.findall(r"lathe\.worker\S*:? candidate (\S+): reusing what an earlier attempt", text)
    return out


@contextlib.contextmanager
def watching(read, fields: tuple[str, ...], interval: float = 0.1):
    """A set of the field tuples of every item `read()` returned, polled in a thread until the block ends."""
    seen: set = set()
    stop = threading.Event()

    def poll():
        while not stop.wait(interval):
            with contextlib.suppress(Exception):  # a missed poll is only a missed sample
                seen.update(tuple(item.get(f) for f in fields) for item in read())

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def test_split_search_matches_the_single_job_through_an_eviction_and_an_operator_restart(
        nodes, operator_env, digits, k8s_client, namespace, tmp_path):
    api, batch, core = client.CustomObjectsApi(k8s_client), client.BatchV1Api(k8s_client), client.CoreV1Api(k8s_client)

    def status(name):
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}

    def jobs(name):
        return {j.metadata.name: j for j in batch.list_namespaced_job(namespace,
                                                                       label_selector=f"{GROUP}/name={name}").items}

    def done(name, timeout):
        try:
            return wait_for(lambda: (s := status(name)).get("phase") in ("Succeeded", "Failed", "Rejected") and s,
                            timeout=timeout, interval=0.5, what=f"{name} finished")
        except AssertionError as e:
            raise AssertionError(f"{e}\nstatus: {json.dumps(status(name), indent=1)[:6000]}") from None

    shard_1 = tmp_path / "artifacts-split" / namespace / "split" / "generation-1" / "shards" / "shard-1"
    # What status says of the running build Jobs (the operator reads their progress lines), watched over the whole
    # search: on a busy machine a first candidate can be handed over before the operator's first look at its pod.
    with operator_with(operator_env) as op, watching(lambda: status("split").get("search", {}).get("builds", []),
                                                     ("phase", "node", "progress")) as seen:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource("single", digits, tmp_path, 1))
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource("split", digits, tmp_path, 2))
        st = wait_for(lambda: (s := status("split")).get("search", {}).get("builds") and s, timeout=60,
                      what="the split search's build Jobs in status")
        assert [(b["shard"], b["candidates"]) for b in st["search"]["builds"]] == [
            (1, SHARD_1), (2, ["int8-static-tensor", "int8-dynamic"])]

        # Evict build Job 1's pod once its first candidate is handed over: the rest of its share is unbuilt.
        wait_for(lambda: (shard_1 / SHARD_1[0] / "candidate.json").is_file(), timeout=300, interval=0.05,
                 what=f"{SHARD_1[0]} handed over by build Job 1")
        (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=split-g1-a1-b1").items
        evicted_on = pod.spec.node_name
        core.create_namespaced_pod_eviction(pod.metadata.name, namespace, {
            "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod.metadata.name,
                                                                        "namespace": namespace}})
        assert not (shard_1 / "manifest.json").exists(), "build Job 1 finished before it could be evicted"

        # The operator goes down mid-search; build Job 2 finishes while nobody watches.
        op.stop()
        wait_for(lambda: (j := jobs("split").get("split-g1-a1-b2")) and j.status.succeeded, timeout=300,
                 what="build Job 2 finished while the operator was down")
        wait_for(lambda: (j := jobs("split").get("split-g1-a1-b1")) and j.status.failed, timeout=120,
                 what="the evicted build Job failed")
        op.start()
        single, split = done("single", 600), done("split", 600)

    assert single["phase"] == "Succeeded", single.get("message")
    assert split["phase"] == "Succeeded", split.get("message")
    running = [(node, progress) for phase, node, progress in seen if phase == "Running"]
    assert any(node in NODES and (progress or "").startswith("[") for node, progress in running), seen
    # exactly the Jobs the plan names: the evicted build retried once, one benchmark, nothing twice
    assert sorted(jobs("split")) == ["split-g1-a1-b1", "split-g1-a1-b2", "split-g1-a1-bench", "split-g1-a2-b1"]
    assert sorted(jobs("single")) == ["single-g1-a1"]
    # every candidate built once, but for one the evicted pod was building when it was stopped: the retried
    # attempt reused what the evicted one handed over and built only the rest of its share
    per_job = builds_per_job(nodes, namespace)
    assert sorted(per_job["single-g1-a1"][0]) == sorted(c["name"] for c in CANDIDATES), per_job
    assert per_job["split-g1-a1-b2"] == (["int8-static-tensor", "int8-dynamic"], []), per_job
    evicted_built, _ = per_job["split-g1-a1-b1"]
    retry_built, retry_reused = per_job["split-g1-a2-b1"]
    assert SHARD_1[0] in evicted_built and SHARD_1[0] in retry_reused, per_job  # handed over before the eviction
    assert sorted(retry_built + retry_reused) == sorted(SHARD_1) and not set(retry_built) & set(retry_reused)
    assert set(retry_reused) <= set(evicted_built), per_job  # reused only what the evicted pod had built
    assert "split-g1-a1-bench" in per_job and per_job["split-g1-a1-bench"] == ([], []), per_job  # no build there
    retried = next(b for b in split["search"]["builds"] if b["shard"] == 1)
    assert (retried["attempt"], retried["phase"], retried["job"]) == (2, "Succeeded", "split-g1-a2-b1")

    # where each Job ran: builds where spec.search.builders says, the rest where spec.target says (the evicted
    # pod is gone from the API; its node was build-1 or build-2 too, as its log folder shows)
    placed = {p.metadata.labels["job-name"]: p.spec.node_name for p in core.list_namespaced_pod(namespace).items}
    assert placed["single-g1-a1"] == "target-1" and placed["split-g1-a1-bench"] == "target-1"
    assert {placed[j] for j in ("split-g1-a2-b1", "split-g1-a1-b2")} <= {"build-1", "build-2"}
    assert evicted_on in ("build-1", "build-2")
    assert [b["node"] for b in split["search"]["builds"]] == [placed["split-g1-a2-b1"], placed["split-g1-a1-b2"]]
    (bench,) = split["search"]["benchmarks"]
    assert (bench["node"], bench["phase"], bench["job"]) == ("target-1", "Succeeded", "split-g1-a1-bench")

    # the same table as the single Job: every candidate with the same verdict and accuracy (the order of the
    # summary puts the winner first when it is trimmed to 4 KiB, and the winner is a matter of speed)
    def table(s):
        return {c["name"]: (c["verdict"], c.get("accuracy"), c.get("accuracyDrop")) for c in s["candidates"]}
    assert table(split) == table(single), (table(split), table(single))
    assert sorted(table(split)) == sorted(c["name"] for c in CANDIDATES)
    assert split["baseline"]["accuracy"] == single["baseline"]["accuracy"]
    # one published version, of the split search's winner
    repo = tmp_path / "repo-split" / "digits"
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["1"]
    assert split["published"]["version"] == 1 and split["published"]["candidate"] == split["winner"]
    assert split["job"]["name"] == "split-g1-a1-bench"
