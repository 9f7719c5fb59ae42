"""kopf registrations, and nothing else: every decision lives in plan.py, every effect in reconcile.py."""

from __future__ import annotations

import datetime
import logging
import os

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from lathe.api.spec import GROUP, PLURAL, VERSION

from . import kube, metrics
from .config import OperatorConfig
from .jobs import NAME_LABEL
from .reconcile import forget, reconcile

CONFIG = OperatorConfig.from_env()
log = logging.getLogger("lathe.operator")


def _client_config() -> None:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        # kubernetes reads $KUBECONFIG at import time; pass it explicitly so tests can set it late.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_):
    global CONFIG
    CONFIG = OperatorConfig.from_env()  # re-read: an embedding process may set env after import
    _client_config()
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
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
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.probe(id="now")
def probe(**_):
    return datetime.datetime.now(datetime.UTC).isoformat()


def _run(namespace: str, name: str, body=None) -> None:
    try:
        reconcile(namespace, name, CONFIG, dict(body) if body is not None else None)
    except ApiException as e:
        raise kopf.TemporaryError(f"API error {e.status} {e.reason}", delay=2) from e


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_resource(namespace, name, body, status, **_):
    # A resource we never wrote status for can be planned from the event's body (saves a read in
    # bursts of new resources); otherwise read it fresh, so no newer status is planned over.
    _run(namespace, name, body if not status else None)


def _wants_timer(status, **_) -> bool:
    phase, stage = status.get("phase"), status.get("stage")
    return phase == "RollingOut" or stage == "retry" or (phase == "Failed" and stage == "validate")


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.rollout_interval, when=_wants_timer)
def on_timer(namespace, name, **_):
    _run(namespace, name)


def _finished(status) -> bool:
    return any(c.get("status") == "True" and c.get("type") in ("Complete", "Failed")
               for c in status.get("conditions") or [])


@kopf.on.event("batch", "v1", "jobs", labels={NAME_LABEL: kopf.PRESENT})
def on_job(event, namespace, labels, status, **_):
    # Only a finished or vanished Job changes what the plan decides; skipping the rest keeps
    # bursts cheap (every created Job would otherwise trigger several passes).
    if event.get("type") == "DELETED" or _finished(status):
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
    if (status.get("rollout") or {}).get("state") == "Progressing":
        from .rollout_tick import abandon

        abandon(namespace, name, dict(spec), dict(status))
    forget(namespace, name)
