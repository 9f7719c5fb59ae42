"""kopf registrations, and nothing else: every decision lives in plan.py, every effect in reconcile.py."""

from __future__ import annotations

import datetime
import logging
import os
import time

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from lathe.api.spec import GROUP, PLURAL, VERSION

from . import incluster, kube, metrics
from .config import OperatorConfig
from .jobs import NAME_LABEL
from .observe import job_state
from .reconcile import forget, reconcile

CONFIG = OperatorConfig.from_env()
log = logging.getLogger("lathe.operator")


def _client_config() -> None:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        # kubernetes reads $KUBECONFIG at import time; pass it explicitly so tests can set it late.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


class _NoDiffBase(kopf.DiffBaseStorage):
    """The reconcile is level-based (generation vs status.observedGeneration), so kopf's copy of
    the last handled spec is never read: storing it would cost a PATCH per resource, and building
    it a deep copy per event."""

    def build(self, *, body, extra_fields=None):
        return {}

    def fetch(self, *, body):
        return None

    def store(self, *, body, patch, essence):
        pass


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_):
    global CONFIG
    CONFIG = OperatorConfig.from_env()  # re-read: an embedding process may set env after import
    _client_config()
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.posting.enabled = True
    settings.posting.loggers = False  # our Events are posted explicitly, one per transition
    settings.execution.max_workers = int(os.environ.get("LATHE_MAX_WORKERS", "16"))
    kube.configure(pool_size=settings.execution.max_workers)
    settings.networking.error_backoffs = [0.5, 1, 2, 5]
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    metrics.serve(CONFIG.metrics_port)


@kopf.on.login()
def login(**kwargs):
    # kopf's default piggybacks on the kubernetes client, which fixes its kubeconfig path at import
    # time; read the environment at login instead (in-cluster first, then $KUBECONFIG).
    # In-cluster: KUBERNETES_SERVICE_HOST, as client-go does, not kopf's DNS name (incluster.py).
    return incluster.login(kwargs["settings"]) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.probe(id="now")
def probe(**_):
    return datetime.datetime.now(datetime.UTC).isoformat()


def _run(namespace: str, name: str, body=None) -> None:
    try:
        reconcile(namespace, name, CONFIG, dict(body) if body is not None else None)
    except ApiException as e:
        raise kopf.TemporaryError(f"API error {e.status} {e.reason}", delay=2) from e


def _unobserved(meta, status, **_) -> bool:
    return status.get("observedGeneration") != meta.get("generation")


def _wants_pass(event, meta, status, **_) -> bool:
    # Level-based, as controller-runtime does it: first sight of a resource (new, or listed again
    # after a restart) and any spec generation not yet observed. Our own status writes and kopf's
    # finalizer patch are not triggers.
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        return False
    return event.get("type") in (None, "ADDED") or _unobserved(meta, status)


@kopf.on.event(GROUP, VERSION, PLURAL, when=_wants_pass)
def on_resource(namespace, name, body, status, **_):
    # Raw events, not kopf's create/update handlers: the first pass runs on the first event, before
    # kopf's finalizer round trip, and writes no progress annotations (half the writes in a burst).
    # A resource we never wrote status for can be planned from the event's body; otherwise read it
    # fresh, so no newer status is planned over. Failures are retried by the resync timer below.
    _run(namespace, name, body if not status else None)


@kopf.timer(GROUP, VERSION, PLURAL, id="resync", interval=CONFIG.resync_interval,
            initial_delay=CONFIG.resync_interval, when=_unobserved)
def resync(namespace, name, **_):
    _run(namespace, name)


def _wants_timer(status, **_) -> bool:
    phase, stage = status.get("phase"), status.get("stage")
    return phase == "RollingOut" or stage == "retry" or (phase == "Failed" and stage == "validate")


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.rollout_interval, when=_wants_timer)
def on_timer(namespace, name, **_):
    _run(namespace, name)


def _searching(status, **_) -> bool:
    # A split search (spec.search.parallelism > 1): its Jobs' phases, nodes and progress lines change while
    # they run, which no Job event says; a slow timer keeps status.search current.
    return status.get("stage") == "search" and status.get("phase") in ("Optimizing", "Pending")


PROGRESS_TICK = 1.0  # the timer's own tick: a decorator's interval is fixed at import, the refresh rate is not
_refreshed: dict[tuple[str, str], float] = {}


@kopf.timer(GROUP, VERSION, PLURAL, id="progress", interval=PROGRESS_TICK, when=_searching)
def on_progress(namespace, name, **_):
    # CONFIG.progress_interval as read at startup (an embedding process, or a test, sets it after import)
    now = time.monotonic()
    if now - _refreshed.get((namespace, name), float("-inf")) < CONFIG.progress_interval:
        return
    _refreshed[(namespace, name)] = now
    _run(namespace, name)


def _job_settled(event, status, **_) -> bool:
    # Only a finished or vanished Job changes what the plan decides (finished as observe.py reads
    # it for the plan). Filtering here rather than in the handler keeps kopf from dispatching the
    # many in-between Job events to the thread pool.
    return event.get("type") == "DELETED" or job_state(dict(status))[0] != "active"


@kopf.on.event("batch", "v1", "jobs", labels={NAME_LABEL: kopf.PRESENT}, when=_job_settled)
def on_job(namespace, labels, **_):
    _run(namespace, labels[NAME_LABEL])


def _pod_pending(event, status, **_) -> bool:
    # A worker pod the scheduler cannot place changes no Job: its Pending events are what tell the
    # plan (observe.unschedulable), and the one that follows its placement clears the condition.
    return event.get("type") != "DELETED" and dict(status).get("phase") == "Pending"


@kopf.on.event("", "v1", "pods", labels={NAME_LABEL: kopf.PRESENT}, when=_pod_pending)
def on_worker_pod(namespace, labels, **_):
    _run(namespace, labels[NAME_LABEL])


@kopf.on.delete(GROUP, VERSION, PLURAL)
def on_delete(namespace, name, spec, status, **_):
    batch = kube.batch()
    jobs = kube.call(batch.list_namespaced_job, namespace, label_selector=f"{NAME_LABEL}={name}")["items"]
    for job in jobs:
        try:
            kube.call(batch.delete_namespaced_job, job["metadata"]["name"], namespace, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise
    rollout = status.get("rollout") or {}
    if rollout.get("state") in ("Pending", "Progressing"):
        from lathe.api.status import RolloutStatus

        from .rollout_tick import abandon

        abandon(namespace, name, dict(spec), RolloutStatus.model_validate(dict(rollout)))
    forget(namespace, name)
    _refreshed.pop((namespace, name), None)
