"""The Helm chart renders (with the real Helm SDK), lints, validates strictly against the
Kubernetes schema, ships the generated CRD, and grants the operator what it calls, nothing more.
The grants themselves are proven against a real API server in tests/rbac; the ServiceMonitor
against the Prometheus Operator's CRD in tests/gitops."""

import ast
import re

import helm_python as helm
import pytest
from kubernetes_validate import validate

from tests.chart.render import CHART, ROOT, one, render
from tests.rbac.calls import CLI_CALLS, CLUSTER_CALLS, CODE_CALLS, NAMESPACED

NAMESPACED_VALUES = {"watchNamespaces": ["ml", "research"], "repositoryClaims": ["triton-models"]}
MONITOR_VALUES = {"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kps"}}}}


def grants(role) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def test_chart_lints_clean():
    for values in ({}, NAMESPACED_VALUES, MONITOR_VALUES):
        report = helm.lint(CHART, values or None, strict=True)
        assert not report["errors"], report
        assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]


def test_chart_ships_the_generated_crd():
    assert (CHART / "crds" / "modeloptimization.yaml").read_text() == \
        (ROOT / "crds" / "modeloptimization.yaml").read_text(), "copy crds/modeloptimization.yaml into the chart"


@pytest.mark.parametrize("values, kinds", [
    ({}, ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]),
    (NAMESPACED_VALUES, ["Deployment", "Role", "Role", "RoleBinding", "RoleBinding", "Service", "ServiceAccount"]),
    (MONITOR_VALUES, ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount",
                      "ServiceMonitor"]),
])
def test_rendered_manifests_are_valid(values, kinds):
    docs = render(values)
    assert sorted(d["kind"] for d in docs) == kinds
    for d in docs:
        if d["kind"] != "ServiceMonitor":  # a CRD kind: checked against its CRD in tests/gitops
            validate(d, "1.33", strict=True)
    c = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    if values is NAMESPACED_VALUES:
        assert "--namespace=ml" in c["args"] and "--namespace=research" in c["args"]
        assert {"name": "repo-0", "mountPath": "/mnt/pvc/triton-models"} in c["volumeMounts"]
        assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role") == ["ml", "research"]
        for rb in (d for d in docs if d["kind"] == "RoleBinding"):
            assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "lathe-operator", "namespace": "lathe-system"}]
    else:
        assert not [a for a in c["args"] if a.startswith("--namespace")]


def test_probes_and_metrics_service_point_at_what_the_operator_serves():
    docs = render()
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    liveness = next(a for a in c["args"] if a.startswith("--liveness="))
    assert liveness == f"--liveness=http://0.0.0.0:{ports['health']}/healthz"  # kopf's endpoint
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["LATHE_METRICS_PORT"] == str(ports["metrics"])
    svc = one(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": ports["metrics"], "targetPort": "metrics"}]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "lathe",
                                                      "app.kubernetes.io/component": "operator"}  # immutable


def test_service_monitor_scrapes_the_metrics_service():
    assert "ServiceMonitor" not in {d["kind"] for d in render()}  # off by default: needs its CRD
    docs = render(MONITOR_VALUES, name="ops", namespace="monitoring-test")
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert sm["metadata"]["namespace"] == "monitoring-test" and sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["selector"]["matchLabels"] == svc["metadata"]["labels"]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["monitoring-test"]}
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]


def _roles(docs) -> dict[tuple[str, str | None], set[tuple[str, str, str]]]:
    return {(d["kind"], d["metadata"].get("namespace")): grants(d) for d in docs if d["kind"] in ("Role", "ClusterRole")}


def test_rbac_grants_exactly_what_the_operator_calls():
    """Both ways: every call in tests/rbac/calls.py is granted, and nothing is granted that is not
    there (the code's calls by call site, kopf's and the cluster-wide ones each with its reason)."""
    # Cluster-wide: one ClusterRole, no Role beside it.
    (cluster,) = _roles(render()).items()
    assert cluster[0] == ("ClusterRole", None)
    assert sorted(cluster[1]) == sorted(set(NAMESPACED) | set(CLUSTER_CALLS))
    # Namespaced: one Role per watched namespace, nothing cluster-wide.
    roles = _roles(render(NAMESPACED_VALUES))
    assert sorted(roles) == [("Role", ns) for ns in sorted(NAMESPACED_VALUES["watchNamespaces"])]
    for role in roles.values():
        assert sorted(role) == NAMESPACED
    no_gateway = _roles(render({"rbac": {"gatewayRoutes": False}}))[("ClusterRole", None)]
    assert no_gateway < cluster[1] and {r for _, r, _ in cluster[1] - no_gateway} == {"httproutes"}


# Kubernetes client methods: namespaced and custom-object calls, cluster-scoped kinds.
_API_METHOD = re.compile(r"_namespaced_|custom_object|_for_all_namespaces$|"
                         r"^(list|read|create|patch|delete|replace)_(node|namespace|persistent_volume|"
                         r"cluster_role|cluster_role_binding|custom_resource_definition)$")


def test_the_call_table_lists_every_api_call_in_the_operator():
    """A new API call in the operator fails here until tests/rbac/calls.py (and so the chart and
    docs/operator.md) has it."""
    pkg = ROOT / "operator" / "lathe"
    found = set()
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        assert "DynamicClient" not in text and "call_api(" not in text, f"{path}: raw API access; add it here"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and _API_METHOD.search(node.attr):
                found.add((path.relative_to(pkg).as_posix(), node.attr))
    assert sorted(found - set(CLI_CALLS)) == sorted(CODE_CALLS)
    assert set(CLI_CALLS) <= found  # the CLI's list names real call sites too
