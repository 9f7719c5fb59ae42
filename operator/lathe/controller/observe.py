"""Reading the world from the API server: the owned Jobs and their pods -> ObservedJob."""

from __future__ import annotations

import logging

from kubernetes import client
from kubernetes.client.rest import ApiException

from .jobs import ATTEMPT_LABEL, GENERATION_LABEL, NAME_LABEL
from .plan import ObservedJob

log = logging.getLogger(__name__)


def _job_state(job: client.V1Job) -> tuple[str, str | None]:
    st = job.status
    for cond in (st.conditions or []) if st else []:
        if cond.status == "True" and cond.type in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", None
        if cond.status == "True" and cond.type in ("Failed", "FailureTarget"):
            return "failed", cond.reason or None
    if st and (st.succeeded or 0) > 0:
        return "succeeded", None
    if st and (st.failed or 0) > 0:
        return "failed", None
    return "active", None


def _terminated(pod: client.V1Pod):
    for cs in (pod.status.container_statuses or []) if pod.status else []:
        if cs.state and cs.state.terminated:
            return cs.state.terminated
    return None


def observe_jobs(namespace: str, name: str) -> list[ObservedJob]:
    batch, core = client.BatchV1Api(), client.CoreV1Api()
    jobs = batch.list_namespaced_job(namespace, label_selector=f"{NAME_LABEL}={name}").items
    out = []
    for job in jobs:
        labels = job.metadata.labels or {}
        if job.metadata.deletion_timestamp:
            continue
        state, reason = _job_state(job)
        exit_code = message = log_tail = None
        if state != "active":
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}").items
            pods.sort(key=lambda p: p.metadata.creation_timestamp or 0)
            for pod in reversed(pods):
                term = _terminated(pod)
                if term is None:
                    continue
                exit_code, message = term.exit_code, term.message
                if state == "failed":
                    log_tail = _log_tail(core, namespace, pod.metadata.name)
                break
        st = job.status
        out.append(ObservedJob(
            name=job.metadata.name,
            generation=int(labels.get(GENERATION_LABEL, "0")),
            attempt=int(labels.get(ATTEMPT_LABEL, "0")),
            state=state, exit_code=exit_code, message=message, log_tail=log_tail, reason=reason,
            started=st.start_time.strftime("%Y-%m-%dT%H:%M:%SZ") if st and st.start_time else None,
            finished=st.completion_time.strftime("%Y-%m-%dT%H:%M:%SZ") if st and st.completion_time
            else (None if state == "active" else _last_transition(job)),
        ))
    return out


def _last_transition(job: client.V1Job) -> str | None:
    times = [c.last_transition_time for c in (job.status.conditions or []) if c.last_transition_time]
    return max(times).strftime("%Y-%m-%dT%H:%M:%SZ") if times else "unknown"


def _log_tail(core: client.CoreV1Api, namespace: str, pod: str) -> str | None:
    try:
        return core.read_namespaced_pod_log(pod, namespace, tail_lines=30)
    except ApiException as e:
        # No kubelet to ask (or the node is gone): the termination message has to do.
        log.debug("no log for pod %s/%s: %s", namespace, pod, e.reason)
        return None
