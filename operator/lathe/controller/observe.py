"""Reading the world from the API server: the owned Jobs and their pods -> ObservedJob.

Responses are read as plain JSON (`_preload_content=False`): building the client's model objects
costs more CPU than the rest of a reconcile pass, and the operator must keep up with bursts."""

from __future__ import annotations

import logging
import re

from kubernetes import client
from kubernetes.client.rest import ApiException

from . import kube
from .jobs import (
    ARCH_LABEL,
    ATTEMPT_LABEL,
    BENCHMARK,
    BUILDER,
    COMPONENT_LABEL,
    GENERATION_LABEL,
    NAME_LABEL,
    PUBLISHER,
    SHARD_LABEL,
)
from .plan import ObservedJob

log = logging.getLogger(__name__)


def job_state(status: dict) -> tuple[str, str | None]:
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", None
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return "failed", cond.get("reason")
    if (status.get("succeeded") or 0) > 0:
        return "succeeded", None
    if (status.get("failed") or 0) > 0:
        return "failed", None
    return "active", None


def _terminated(pod: dict) -> dict | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term
    return None


def _memory_limit(pod: dict) -> str | None:
    """limits.memory of the pod's (first) container: what a worker killed for memory ran under."""
    for c in (pod.get("spec") or {}).get("containers") or []:
        return ((c.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def unschedulable(pod: dict) -> str | None:
    """The scheduler's message for a pod it could not place (e.g. "0/3 nodes are available: 3
    Insufficient nvidia.com/gpu."), else None."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return cond.get("message") or "Unschedulable"
    return None


PROGRESS = re.compile(r" lathe\.worker:? (\[[a-z-]+\].*)$")


def progress_line(log: str) -> str | None:
    """The worker's last progress line in a log tail ("[candidates]  50%, ETA 20s building int8-static"),
    without its timestamp; None when there is none."""
    for line in reversed(log.splitlines()):
        m = PROGRESS.search(line)
        if m:
            return m.group(1).strip()[:200]
    return None


def observe_jobs(namespace: str, name: str) -> list[ObservedJob]:
    batch, core = kube.batch(), kube.core()
    jobs = kube.call(batch.list_namespaced_job, namespace, label_selector=f"{NAME_LABEL}={name}")["items"]
    search = [j for j in jobs if ((j["metadata"].get("labels") or {}).get(COMPONENT_LABEL) in (BUILDER, BENCHMARK))]
    # a split search shows where each Job runs: one listing of the resource's pods, not one per Job
    pods_of = _pods_by_job(core, namespace, name) if search else {}
    out = []
    for job in jobs:
        meta, st = job["metadata"], job.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        labels = meta.get("labels") or {}
        state, reason = job_state(st)
        exit_code = message = log_tail = pod_name = waiting = container_reason = memory_limit = progress = None
        node = None
        mine = pods_of.get(meta["name"], [])
        if mine:
            node = mine[-1].get("spec", {}).get("nodeName")
            if state == "active" and (st.get("ready") or 0):
                progress = _progress(core, namespace, mine[-1]["metadata"]["name"])
        if state == "active" and not (st.get("ready") or 0):  # no pod running yet: is one stuck unscheduled?
            pods = kube.call(core.list_namespaced_pod, namespace, label_selector=f"job-name={meta['name']}")["items"]
            for pod in pods:
                waiting = unschedulable(pod)
                if waiting:
                    pod_name = pod["metadata"]["name"]
                    break
        if state != "active":
            pods = kube.call(core.list_namespaced_pod, namespace, label_selector=f"job-name={meta['name']}")["items"]
            pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
            for pod in reversed(pods):
                term = _terminated(pod)
                if term is None:
                    continue
                exit_code, message = term.get("exitCode"), term.get("message")
                container_reason, memory_limit = term.get("reason"), _memory_limit(pod)
                pod_name = pod["metadata"]["name"]
                if state == "failed":
                    log_tail = _log_tail(core, namespace, pod["metadata"]["name"])
                break
        finished = st.get("completionTime")
        if finished is None and state != "active":
            times = [c["lastTransitionTime"] for c in st.get("conditions") or [] if c.get("lastTransitionTime")]
            finished = max(times) if times else "unknown"
        out.append(ObservedJob(
            name=meta["name"], generation=int(labels.get(GENERATION_LABEL, "0")),
            attempt=int(labels.get(ATTEMPT_LABEL, "0")), state=state, exit_code=exit_code, message=message,
            log_tail=log_tail, reason=reason, started=st.get("startTime"), finished=finished, pod=pod_name,
            unschedulable=waiting, architecture=labels.get(ARCH_LABEL),
            publisher=labels.get(COMPONENT_LABEL) == PUBLISHER, ready=int(st.get("ready") or 0),
            container_reason=container_reason, memory_limit=memory_limit,
            component=labels.get(COMPONENT_LABEL) or "worker",
            shard=int(labels[SHARD_LABEL]) if (labels.get(SHARD_LABEL) or "").isdigit() else None,
            node=node, progress=progress))
    return out


def _pods_by_job(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, list[dict]]:
    pods = kube.call(core.list_namespaced_pod, namespace, label_selector=f"{NAME_LABEL}={name}")["items"]
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
    out: dict[str, list[dict]] = {}
    for pod in pods:
        job = (pod["metadata"].get("labels") or {}).get("job-name")
        if job:
            out.setdefault(job, []).append(pod)
    return out


def _progress(core: client.CoreV1Api, namespace: str, pod: str) -> str | None:
    try:
        return progress_line(core.read_namespaced_pod_log(pod, namespace, tail_lines=20) or "")
    except ApiException as e:  # informative only
        log.debug("no progress for pod %s/%s: %s", namespace, pod, e.reason)
        return None


def _log_tail(core: client.CoreV1Api, namespace: str, pod: str) -> str | None:
    try:
        return core.read_namespaced_pod_log(pod, namespace, tail_lines=30)
    except ApiException as e:
        # No kubelet to ask (or the node is gone): the termination message has to do.
        log.debug("no log for pod %s/%s: %s", namespace, pod, e.reason)
        return None
