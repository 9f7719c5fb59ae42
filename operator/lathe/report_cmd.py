"""`lathe report NAME [-n NS] [--html FILE] [--json FILE]`: a ModelOptimization's result, read
through the API server with your kubeconfig: the full result from the resource's report ConfigMap
(see lathe.api.result_log) when the operator kept one, else the summary in its status."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

from lathe.api import result_log
from lathe.api.spec import GROUP, PLURAL, VERSION, ModelOptimizationSpec
from lathe.api.status import ModelOptimizationStatus, WorkerResult
from lathe.evaluate.table import table, verdict_line


def _clients(namespace: str | None):
    from kubernetes import client, config  # noqa: PLC0415

    try:
        config.load_kube_config()
        ns = namespace or config.list_kube_config_contexts()[1].get("context", {}).get("namespace") or "default"
    except config.ConfigException:
        config.load_incluster_config()
        ns = namespace or Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
    return client.CustomObjectsApi(), client.CoreV1Api(), ns


def from_status(status: ModelOptimizationStatus) -> WorkerResult | None:
    if status.baseline is None:
        return None
    return WorkerResult(metric=status.metric or "", baseline=status.baseline, candidates=status.candidates,
                        winner=status.winner, selection=status.selection or "", report=status.report,
                        copies=status.report_copies, published=status.published)


def fetch(name: str, namespace: str | None) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """(the resource, the full result document or None, namespace)."""
    from kubernetes.client.rest import ApiException  # noqa: PLC0415

    custom, core, ns = _clients(namespace)
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    status = ModelOptimizationStatus.model_validate(obj.get("status") or {})
    doc = None
    if status.report_config_map:
        try:
            cm = core.read_namespaced_config_map(status.report_config_map, ns)
            data = (cm.binary_data or {}).get(result_log.CONFIG_MAP_KEY)
            doc = result_log.unpack(base64.b64decode(data)) if data else None
        except ApiException as e:
            print(f"lathe report: ConfigMap {status.report_config_map} unreadable ({e.status} {e.reason}); "
                  "showing the summary in status", file=sys.stderr)
    return obj, doc, ns


def report_main(name: str, namespace: str | None, html: str | None, json_out: str | None) -> int:
    from kubernetes.client.rest import ApiException  # noqa: PLC0415

    try:
        obj, doc, ns = fetch(name, namespace)
    except ApiException as e:
        print(f"lathe report: cannot read modeloptimization {name}: {e.status} {e.reason}", file=sys.stderr)
        return 1
    status = ModelOptimizationStatus.model_validate(obj.get("status") or {})
    print(f"{ns}/{name}: {status.phase} — {status.message}")
    if doc is not None:
        wr = WorkerResult.model_validate(doc["result"])
        details, budget, source = doc.get("details") or {}, doc.get("budget") or {}, \
            f"ConfigMap {status.report_config_map}"
    else:
        wr = from_status(status)
        details, budget, source = {}, {}, "status (summary: no report ConfigMap)"
        if wr is None:
            print("no result yet")
            return 3
    print(f"result from {source}\n")
    print(table(wr))
    print()
    print(verdict_line(wr))
    if wr.published:
        print(f"published: {wr.published.model_name} version {wr.published.version} ({wr.published.flavour}) "
              f"in {wr.published.repository}")
    for c in wr.copies:
        print(f"kept: {c}")
    if json_out:
        Path(json_out).write_text(wr.model_dump_json(by_alias=True, indent=2))
        print(f"wrote {json_out}")
    if html:
        from lathe.evaluate.report import html_report  # noqa: PLC0415

        spec = ModelOptimizationSpec.model_validate(obj.get("spec") or {})
        Path(html).write_text(html_report(wr, spec, budget, details))
        print(f"wrote {html}" + ("" if details else " (summary only: no latency distributions or per-layer "
                                                    "figures without the report ConfigMap)"))
    return 0
