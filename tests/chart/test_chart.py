"""The Helm chart renders (with the real Helm SDK), lints, validates strictly against the
Kubernetes schema, ships the generated CRD, and grants the operator what it uses."""

from pathlib import Path

import helm_python as helm
import pytest
import yaml
from kubernetes_validate import validate

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lathe"


def render(values=None) -> list[dict]:
    out = helm.Chart.load(CHART).render(values or {}, name="lathe", namespace="lathe-system", is_install=True)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


def test_chart_lints_clean():
    report = helm.lint(CHART, strict=True)
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]


def test_chart_ships_the_generated_crd():
    assert (CHART / "crds" / "modeloptimization.yaml").read_text() == \
        (ROOT / "crds" / "modeloptimization.yaml").read_text(), "copy crds/modeloptimization.yaml into the chart"


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["ml", "research"], "repositoryClaims": ["triton-models"]}])
def test_rendered_manifests_are_valid(values):
    docs = render(values)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    for d in docs:
        validate(d, "1.33", strict=True)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    if values:
        assert "--namespace=ml" in c["args"] and "--namespace=research" in c["args"]
        assert {"name": "repo-0", "mountPath": "/mnt/pvc/triton-models"} in c["volumeMounts"]


def test_rbac_covers_what_the_operator_calls():
    role = next(d for d in render() if d["kind"] == "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    needed = [("lathe.dev", "modeloptimizations", "watch"), ("lathe.dev", "modeloptimizations/status", "update"),
              ("lathe.dev", "modeloptimizations", "patch"), ("batch", "jobs", "create"), ("batch", "jobs", "delete"),
              ("", "pods", "list"), ("", "pods/log", "get"), ("", "persistentvolumeclaims", "get"),
              ("", "events", "create")]
    assert [n for n in needed if n not in granted] == []
