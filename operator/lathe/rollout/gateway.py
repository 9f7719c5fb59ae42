"""Gateway API HTTPRoute with weighted backendRefs, for clusters with a gateway.

One Triton Service serves both versions, so each weighted backendRef carries a URLRewrite filter
that pins the KServe-v2 path to its version:
    /v2/models/<model>/infer  →  /v2/models/<model>/versions/<v>/infer
(backendRef-level filters are "Extended" support in Gateway API: Envoy Gateway, Istio, Cilium and
NGINX Gateway Fabric implement URLRewrite there). With one Triton Deployment per version, pass
`services={version: "svc-name"}` and no rewrite is needed (`pin_version=False`).
"""

from __future__ import annotations

import re

API_VERSION = "gateway.networking.k8s.io/v1"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def route_name(model: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", model.lower()).strip("-")[:253] or "model"


def httproute(model: str, weights: dict[int, int], *, namespace: str = "default", service: str = "triton",
              port: int = 8000, parent_refs: list[dict] | None = None, hostnames: list[str] | None = None,
              services: dict[int, str] | None = None, pin_version: bool = True,
              labels: dict[str, str] | None = None) -> dict:
    parent_refs = parent_refs or [{"name": "gateway"}]
    refs = []
    for v, w in sorted(weights.items()):
        ref = {"group": "", "kind": "Service", "name": (services or {}).get(v, service), "port": port, "weight": int(w)}
        if pin_version:
            ref["filters"] = [{"type": "URLRewrite", "urlRewrite": {"path": {
                "type": "ReplacePrefixMatch", "replacePrefixMatch": f"/v2/models/{model}/versions/{v}"}}}]
        refs.append(ref)
    spec = {"parentRefs": parent_refs,
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/v2/models/{model}"}}],
                       "backendRefs": refs}]}
    if hostnames:
        spec["hostnames"] = hostnames
    return {"apiVersion": API_VERSION, "kind": "HTTPRoute",
            "metadata": {"name": route_name(model), "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "lathe", **(labels or {})}},
            "spec": spec}


def validate_httproute(m: dict) -> None:
    """Structural checks from the Gateway API v1 CRD schema (the parts we generate); raises ValueError."""
    errs = []
    if m.get("apiVersion") != API_VERSION or m.get("kind") != "HTTPRoute":
        errs.append("apiVersion/kind must be gateway.networking.k8s.io/v1 HTTPRoute")
    md = m.get("metadata", {})
    if not _DNS1123.match(md.get("name", "")) or len(md.get("name", "")) > 253:
        errs.append(f"metadata.name {md.get('name')!r} is not a DNS-1123 subdomain")
    spec = m.get("spec", {})
    prs = spec.get("parentRefs", [])
    if not 1 <= len(prs) <= 32 or not all(isinstance(p, dict) and p.get("name") for p in prs):
        errs.append("spec.parentRefs: 1..32 entries, each with a name")
    for h in spec.get("hostnames", []):
        if not re.match(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", h):
            errs.append(f"hostname {h!r} invalid")
    rules = spec.get("rules", [])
    if not 1 <= len(rules) <= 16:
        errs.append("spec.rules: 1..16 entries")
    for i, r in enumerate(rules):
        for mt in r.get("matches", []):
            p = mt.get("path", {})
            if p.get("type") not in ("Exact", "PathPrefix", "RegularExpression") or not str(p.get("value", "")).startswith("/"):
                errs.append(f"rules[{i}].matches.path must have a type and an absolute value")
        brs = r.get("backendRefs", [])
        if len(brs) > 16:
            errs.append(f"rules[{i}].backendRefs: at most 16")
        if brs and sum(b.get("weight", 1) for b in brs) <= 0:
            errs.append(f"rules[{i}]: all backend weights are 0")
        for j, b in enumerate(brs):
            w = b.get("weight", 1)
            if not isinstance(w, int) or not 0 <= w <= 1_000_000:
                errs.append(f"rules[{i}].backendRefs[{j}].weight must be an int in 0..1000000")
            if not b.get("name") or not _DNS1123.match(b["name"]):
                errs.append(f"rules[{i}].backendRefs[{j}].name invalid")
            if b.get("kind", "Service") == "Service" and not (isinstance(b.get("port"), int) and 1 <= b["port"] <= 65535):
                errs.append(f"rules[{i}].backendRefs[{j}]: a Service backend needs port 1..65535")
            for f in b.get("filters", []):
                if f.get("type") == "URLRewrite":
                    pth = f.get("urlRewrite", {}).get("path", {})
                    if pth.get("type") != "ReplacePrefixMatch" or not pth.get("replacePrefixMatch", "").startswith("/"):
                        errs.append(f"rules[{i}].backendRefs[{j}]: URLRewrite needs an absolute replacePrefixMatch")
                    if not all(mt.get("path", {}).get("type") == "PathPrefix" for mt in r.get("matches", [])):
                        errs.append(f"rules[{i}]: ReplacePrefixMatch needs PathPrefix matches")
                elif f.get("type") not in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                                           "ExtensionRef", "CORS"):
                    errs.append(f"rules[{i}].backendRefs[{j}]: filter type {f.get('type')!r} not allowed")
    if errs:
        raise ValueError("invalid HTTPRoute: " + "; ".join(errs))


def to_yaml(m: dict) -> str:
    import yaml

    return yaml.safe_dump(m, sort_keys=False)
