"""Keeping the worker's full result after its pod: read from the pod's log through the API server
(pods/log; the worker holds no credentials, see lathe.api.result_log) into a ConfigMap owned by
the resource, so that `lathe report NAME` and the garbage collector both find it."""

from __future__ import annotations

import base64
import logging
from typing import Any

from kubernetes.client.rest import ApiException

from lathe.api import result_log
from lathe.api.status import ModelOptimizationStatus

from . import kube
from .plan import set_condition

log = logging.getLogger(__name__)
TAIL_LINES = 400  # the result block is at most ~150 lines of 8000 characters (result_log.LIMIT)


def config_map_name(name: str) -> str:
    return f"{name}-report"


def manifest(owner: dict[str, Any], data: bytes) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(meta["name"]), "namespace": meta["namespace"],
            "labels": {"app.kubernetes.io/managed-by": "lathe", "lathe.dev/name": meta["name"],
                       "lathe.dev/generation": str(meta.get("generation") or 1)},
            "ownerReferences": [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
                                 "uid": meta["uid"], "blockOwnerDeletion": False}],
        },
        "binaryData": {result_log.CONFIG_MAP_KEY: base64.b64encode(data).decode()},
    }


def keep_report(owner: dict[str, Any], pod: str | None, status: ModelOptimizationStatus, now, generation: int) -> str:
    """Store the result; returns why not (also in the ReportKept condition), or '' when kept."""
    ns, name = owner["metadata"]["namespace"], owner["metadata"]["name"]
    why = ""
    if pod is None:
        why = "the worker pod is gone: its log cannot be read"
    else:
        try:
            text = kube.core().read_namespaced_pod_log(pod, ns, container="worker", tail_lines=TAIL_LINES)
        except ApiException as e:
            text, why = None, f"reading the log of pod {pod} failed: {e.status} {kube.api_message(e)}"
        if text is not None:
            data = result_log.extract(text if isinstance(text, str) else str(text))
            if data is None:
                why = f"the log of pod {pod} holds no complete result block"
            else:
                body = manifest(owner, data)
                core = kube.core()
                try:
                    try:
                        kube.call(core.create_namespaced_config_map, ns, body)
                    except ApiException as e:
                        if e.status != 409:
                            raise
                        kube.call(core.replace_namespaced_config_map, body["metadata"]["name"], ns, body)
                except ApiException as e:
                    why = f"storing ConfigMap {body['metadata']['name']} failed: {e.status} {kube.api_message(e)}"
    if why:
        log.warning("%s/%s: full result not kept: %s", ns, name, why)
        status.report_config_map = None
        set_condition(status, "ReportKept", False, "ReportNotKept", why, now, generation)
    else:
        status.report_config_map = config_map_name(name)
        set_condition(status, "ReportKept", True, "ReportKept",
                      f"full result in ConfigMap {status.report_config_map} (`lathe report {name} -n {ns}`)",
                      now, generation)
    return why
