"""One reconcile pass: observe -> plan (pure) -> apply. The only writer of status.

Every pass re-reads the resource, so it can be triggered from anywhere (the resource's own
handlers, a Job event, a timer) and by several threads: a per-resource lock serialises them, and
status is written as a merge patch of what changed (this operator is its only writer)."""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import urllib.request
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from lathe.api.spec import GROUP, KIND, PLURAL, VERSION
from lathe.api.status import ModelOptimizationStatus
from lathe.storage.uri import parse_uri

from . import kube, metrics
from .config import OperatorConfig
from .jobs import job_manifest, publish_job_manifest
from .observe import observe_jobs
from .plan import (
    AbandonRollout,
    CreateJob,
    CreatePublishJob,
    DeleteJob,
    Event,
    KeepReport,
    Plan,
    Policy,
    Requeue,
    RolloutTick,
    World,
    job_create_refused,
    plan,
)
from .validate import parse, problems

log = logging.getLogger("lathe.reconcile")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def forget(namespace: str, name: str) -> None:
    with _locks_guard:
        _locks.pop(f"{namespace}/{name}", None)
    metrics.record_phase(f"{namespace}/{name}", None)


def reachability(namespace: str):
    """uri -> None when reachable from the cluster's point of view, else why not."""
    core = kube.core()

    def check(uri: str) -> str | None:
        scheme, authority, _ = parse_uri(uri)
        if scheme == "pvc":
            try:
                core.read_namespaced_persistent_volume_claim(authority, namespace)
            except ApiException as e:
                if e.status == 404:
                    return f"PersistentVolumeClaim {authority!r} not found in namespace {namespace}"
                return f"PersistentVolumeClaim {authority!r}: {e.status} {e.reason}"
        elif scheme == "https":
            try:
                req = urllib.request.Request(uri, method="HEAD")
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status >= 400:
                        return f"HTTP {resp.status}"
            except (OSError, ValueError) as e:
                return str(getattr(e, "reason", e))
        return None

    return check


def secret_keys(namespace: str):
    """Secret name -> its key names (never the values), or why it cannot be read."""
    core = kube.core()
    seen: dict[str, set[str] | str] = {}

    def keys(secret: str) -> set[str] | str:
        if secret not in seen:
            try:
                obj = kube.call(core.read_namespaced_secret, secret, namespace)
                seen[secret] = set((obj.get("data") or {}).keys()) | set((obj.get("stringData") or {}).keys())
            except ApiException as e:
                seen[secret] = (f"Secret {secret!r} not found in namespace {namespace}" if e.status == 404 else
                                f"Secret {secret!r}: {e.status} {kube.api_message(e)}")
        return seen[secret]

    return keys


def reconcile(namespace: str, name: str, config: OperatorConfig, body: dict[str, Any] | None = None
              ) -> float | None:
    """Run one pass; returns seconds after which another pass is wanted, if any. `body`: the
    resource as the triggering event delivered it, saving a read (only for the first try)."""
    key = f"{namespace}/{name}"
    with _lock(key), metrics.RECONCILE_SECONDS.time():
        metrics.RECONCILES.inc()
        for attempt in range(5):
            try:
                return _once(namespace, name, config, body if attempt == 0 else None)
            except ApiException as e:
                if e.status == 409:
                    continue  # someone wrote in between: read again
                metrics.RECONCILE_ERRORS.labels("api").inc()
                raise
            except Exception:
                metrics.RECONCILE_ERRORS.labels("internal").inc()
                raise
        metrics.RECONCILE_ERRORS.labels("conflict").inc()
        return 1.0


def _once(namespace: str, name: str, config: OperatorConfig, body: dict[str, Any] | None) -> float | None:
    api = kube.custom()
    try:
        obj = body or kube.call(api.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            forget(namespace, name)
            return None
        raise
    if obj["metadata"].get("deletionTimestamp"):
        return None
    generation = int(obj["metadata"].get("generation") or 1)
    spec, found = parse(obj.get("spec") or {})
    keys = secret_keys(namespace)
    if spec is not None:
        found = problems(spec, reachability(namespace), keys,
                         memory_limit=(config.cpu_resources.get("limits") or {}).get("memory"))
    raw_status = obj.get("status") or {}
    try:
        status = ModelOptimizationStatus.model_validate(raw_status)
    except Exception:  # noqa: BLE001 - a status someone edited by hand: start over, keep nothing wrong
        log.warning("%s: unreadable status, starting from scratch", name)
        status = ModelOptimizationStatus()
    # A resource with no Job on record has none to observe (a create is idempotent anyway):
    # skipping the list keeps the first pass of a burst of new resources to one write.
    known = status.job is not None or status.observed_generation is not None
    jobs = observe_jobs(namespace, name) if spec is not None and not found and known else []
    world = World(generation=generation, spec=spec, problems=found, status=status, jobs=jobs,
                  now=datetime.now(UTC), policy=Policy(config.max_attempts, config.backoff_seconds))
    result = plan(world)
    # The key names of every spec.storage Secret (what the Job may reference by secretKeyRef).
    refs = [e.secret_ref for e in (spec.storage.s3, spec.storage.gcs, spec.storage.azure) if e is not None] \
        if spec is not None and spec.storage else []
    store_keys = {r: k for r in refs if isinstance(k := keys(r), set)}
    requeue = _apply(obj, result, world, config, store_keys)
    _write_status(api, obj, result.status)
    metrics.record_phase(f"{namespace}/{name}", result.status.phase)
    return requeue


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning `old` into `new` (removed keys become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: None for k in old.keys() - new.keys()}
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif old[k] != v:
            patch[k] = merge_patch(old[k], v)
    return patch


def _write_status(api: client.CustomObjectsApi, obj: dict[str, Any], status: ModelOptimizationStatus) -> None:
    # A merge patch of what changed: this operator is the only writer of status (and one pass per
    # resource runs at a time), so no resourceVersion round trip is needed.
    old = obj.get("status") or {}
    new = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    if new == old:
        return
    kube.call(api.patch_namespaced_custom_object_status, GROUP, VERSION, obj["metadata"]["namespace"], PLURAL,
              obj["metadata"]["name"], {"status": merge_patch(old, new)},
              _content_type="application/merge-patch+json")


def _apply(obj: dict[str, Any], result: Plan, world: World, config: OperatorConfig,
           store_keys: dict[str, set[str]]) -> float | None:
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    requeue: float | None = None
    for action in result.actions:
        if isinstance(action, CreateJob | CreatePublishJob):
            spec_json = json.dumps(obj["spec"], separators=(",", ":"))
            if isinstance(action, CreatePublishJob):
                manifest = publish_job_manifest(obj, world.spec, spec_json, action.candidate, action.attempt, config,
                                                store_keys)
            else:
                arch = next((a for a in world.spec.target.gpu.architectures
                             if a.compute_capability == action.architecture), None)
                manifest = job_manifest(obj, world.spec, spec_json, action.attempt, config, store_keys, arch,
                                        role=action.role, shard=action.shard, shards=action.shards,
                                        failed=action.failed)
            try:
                kube.call(kube.batch().create_namespaced_job, ns, manifest)
                metrics.JOBS_CREATED.inc()
                log.info("%s/%s: created Job %s", ns, name, manifest["metadata"]["name"])
            except ApiException as e:
                if e.status == 409:  # created by an earlier pass: the name carries the attempt
                    continue
                if e.status in (401, 404, 429) or e.status >= 500:
                    raise  # transient or ours to retry as a whole pass
                why = f"{e.status} {kube.api_message(e)}"
                log.warning("%s/%s: Job %s refused: %s", ns, name, manifest["metadata"]["name"], why)
                for event in job_create_refused(result.status, action.attempt, why, world.now, world.generation):
                    post_event(obj, event.type, event.reason, event.message)
                requeue = config.rollout_interval
                break  # the rest of the plan assumed the Job exists
        elif isinstance(action, DeleteJob):
            try:
                kube.call(kube.batch().delete_namespaced_job, action.name, ns, propagation_policy="Background")
                log.info("%s/%s: deleted Job %s (%s)", ns, name, action.name, action.why)
            except ApiException as e:
                if e.status != 404:
                    raise
        elif isinstance(action, Event):
            post_event(obj, action.type, action.reason, action.message)
        elif isinstance(action, Requeue):
            requeue = action.seconds if requeue is None else min(requeue, action.seconds)
        elif isinstance(action, AbandonRollout):
            from .rollout_tick import abandon

            abandon(ns, name, obj["spec"], action.rollout)
        elif isinstance(action, KeepReport):
            from .report_store import keep_report

            why = keep_report(obj, action.pod, result.status, world.now, world.generation)
            if why:
                post_event(obj, "Warning", "ReportNotKept", f"full result of {action.job} not kept: {why}")
        elif isinstance(action, RolloutTick):
            from .rollout_tick import tick  # Triton client only loaded when a rollout runs

            wait = tick(obj, world, result, config)
            requeue = wait if requeue is None else min(requeue, wait)
    if world.status.phase != result.status.phase and result.status.phase in ("Succeeded", "Rejected", "Failed",
                                                                                "RolledBack"):
        for c in result.status.candidates:
            metrics.CANDIDATES.labels(c.verdict, c.runtime or "?").inc()
        if result.status.job and result.status.job.started:
            started = datetime.fromisoformat(result.status.job.started.replace("Z", "+00:00"))
            metrics.STAGE_SECONDS.labels(result.status.stage or "worker").observe(
                (world.now - started).total_seconds())
    return requeue


_HOST = socket.gethostname()
_events: queue.Queue = queue.Queue(maxsize=10000)


def _post_events() -> None:
    while True:
        ns, body = _events.get()
        try:
            kube.call(kube.core().create_namespaced_event, ns, body)
        except ApiException as e:  # events are best effort; the status carries the same facts
            log.warning("could not post event %s on %s: %s %s", body["reason"],
                        body["involvedObject"]["name"], e.status, e.reason)
        except Exception:  # noqa: BLE001 - never let the poster die
            log.exception("could not post event")


_poster: threading.Thread | None = None


def post_event(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """Queue a Kubernetes Event; a background thread posts it, off the reconcile's critical path."""
    global _poster
    if _poster is None or not _poster.is_alive():
        _poster = threading.Thread(target=_post_events, name="lathe-events", daemon=True)
        _poster.start()
    meta = obj["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"],
                           "resourceVersion": meta.get("resourceVersion")},
        "reason": reason, "message": message[:1024], "type": type_,
        "source": {"component": "lathe-operator", "host": _HOST},
        "reportingComponent": "lathe.dev/operator", "reportingInstance": _HOST,
        "firstTimestamp": now, "lastTimestamp": now, "eventTime": now, "action": reason, "count": 1,
    }
    try:
        _events.put_nowait((meta["namespace"], body))
    except queue.Full:
        log.warning("event queue full; dropped %s on %s", reason, meta["name"])
