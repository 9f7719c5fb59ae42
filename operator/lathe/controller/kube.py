"""One shared Kubernetes API client for the operator.

Each `client.XxxApi()` without an ApiClient builds a new connection pool, i.e. a TLS handshake per
call; under a burst that was most of the operator's CPU. The APIs here share one pool sized for
the handler threads, and are built at start-up (the client imports its modules lazily, which
serialises threads on the import lock when it happens mid-burst)."""

from __future__ import annotations

import json
import threading
from typing import Any

from kubernetes import client

_lock = threading.Lock()
_apis: dict[str, object] = {}


def configure(pool_size: int = 32) -> None:
    conf = client.Configuration.get_default_copy()
    conf.connection_pool_maxsize = pool_size
    api_client = client.ApiClient(conf)
    with _lock:
        _apis.update(core=client.CoreV1Api(api_client), batch=client.BatchV1Api(api_client),
                     custom=client.CustomObjectsApi(api_client))


def _get(name: str):
    if not _apis:
        configure()
    return _apis[name]


def core() -> client.CoreV1Api:
    return _get("core")


def batch() -> client.BatchV1Api:
    return _get("batch")


def custom() -> client.CustomObjectsApi:
    return _get("custom")


def call(fn, *args, **kwargs) -> Any:
    """Call an API method, returning the response as plain JSON (no model objects: they cost more
    CPU than the rest of a pass). The body is always read, which hands the connection back to the
    pool; an unread response would leak it and the next call would pay a new TLS handshake."""
    resp = fn(*args, _preload_content=False, **kwargs)
    data = resp.data
    resp.release_conn()
    return json.loads(data) if data else None


def api_message(e) -> str:
    """The API server's own words from an ApiException (its Status message), else the reason."""
    try:
        return json.loads(e.body)["message"]
    except (TypeError, ValueError, KeyError):
        return e.reason or "refused"
