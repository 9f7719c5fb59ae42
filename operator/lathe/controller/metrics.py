"""Prometheus metrics of the operator (served on the operator's metrics port)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RESOURCES = Gauge("lathe_resources", "ModelOptimization resources by phase", ["phase"])
RECONCILES = Counter("lathe_reconciles_total", "Reconcile passes")
RECONCILE_ERRORS = Counter("lathe_reconcile_errors_total", "Reconcile passes that raised", ["kind"])
RECONCILE_SECONDS = Histogram("lathe_reconcile_seconds", "Time spent in one reconcile pass")
STAGE_SECONDS = Histogram("lathe_stage_seconds", "Duration of a finished stage", ["stage"],
                          buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600))
CANDIDATES = Counter("lathe_candidates_total", "Candidates evaluated, by verdict", ["verdict", "runtime"])
JOBS_CREATED = Counter("lathe_jobs_created_total", "Worker Jobs created")

_phases: dict[str, str] = {}
_lock = threading.Lock()


def record_phase(key: str, phase: str | None) -> None:
    with _lock:
        if phase is None:
            _phases.pop(key, None)
        else:
            _phases[key] = phase
        counts: dict[str, int] = {}
        for p in _phases.values():
            counts[p] = counts.get(p, 0) + 1
        for p in list(RESOURCES._metrics):  # reset phases that emptied
            RESOURCES.labels(*p).set(0)
        for p, n in counts.items():
            RESOURCES.labels(p).set(n)


_serving: set[int] = set()


def serve(port: int) -> None:
    """Start the metrics endpoint once per process (an operator restarted in-process keeps it)."""
    if port and port not in _serving:
        start_http_server(port)
        _serving.add(port)
