"""The GitOps examples (examples/gitops) and the chart's ServiceMonitor, against the real API server
with the real third-party CRDs (Argo CD's Application, Flux's GitRepository, HelmRelease and
Kustomization, the Prometheus Operator's ServiceMonitor: e2e/gitops/crds.sh fetches them from the
projects' Go modules): `kubectl apply --dry-run=server` accepts the examples and what they install,
and refuses broken copies, so the schemas are really applied. No Argo CD or Flux controller runs
here: syncing from git is not exercised."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.chart.render import CHART, render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "gitops"
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"
NAMESPACES = ["argocd", "flux-system", "lathe-system", "ml"]  # where the examples put things


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


@pytest.fixture(scope="module")
def cluster(control_plane, k8s_client):
    out = subprocess.run(["bash", str(ROOT / "e2e/gitops/crds.sh")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    names = control_plane.install_crds([Path(out.stdout.strip().splitlines()[-1])])
    assert len(names) == 5, names
    core = client.CoreV1Api(k8s_client)
    have = {n.metadata.name for n in core.list_namespace().items}
    made = [ns for ns in NAMESPACES if ns not in have]
    for ns in made:
        core.create_namespace({"metadata": {"name": ns}})

    def kubectl(*args: str, docs: list[dict] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(KUBECTL), "--kubeconfig", str(control_plane.kubeconfig), *args],
                              input=yaml.safe_dump_all(docs) if docs is not None else None,
                              capture_output=True, text=True, timeout=120)
    yield kubectl
    for ns in made:
        core.delete_namespace(ns)


def accepted(kubectl, docs: list[dict]) -> list[str]:
    out = kubectl("apply", "--dry-run=server", "-f", "-", docs=docs)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(docs) and all(line.endswith("(server dry run)") for line in lines), out.stdout
    return lines


def refused(kubectl, doc: dict, why: str) -> None:
    out = kubectl("apply", "--dry-run=server", "-f", "-", docs=[doc])
    assert out.returncode != 0, f"accepted: {out.stdout}"
    assert why in out.stderr, out.stderr


def test_argocd_applications_are_accepted(cluster):
    lines = accepted(cluster, load("argocd-application.yaml"))
    assert lines == ["application.argoproj.io/lathe created (server dry run)",
                     "application.argoproj.io/lathe-digits created (server dry run)"]


def test_flux_objects_are_accepted(cluster):
    assert [line.split()[0] for line in accepted(cluster, load("flux-helmrelease.yaml"))] == [
        "gitrepository.source.toolkit.fluxcd.io/lathe", "helmrelease.helm.toolkit.fluxcd.io/lathe",
        "kustomization.kustomize.toolkit.fluxcd.io/lathe-digits"]


def test_the_crd_schemas_refuse_broken_copies(cluster):
    app, digits_app = load("argocd-application.yaml")
    bad = copy.deepcopy(app)
    bad["spec"]["syncPolicy"]["automated"]["prune"] = "yes"
    refused(cluster, bad, "spec.syncPolicy.automated.prune")
    bad = copy.deepcopy(digits_app)
    del bad["spec"]["destination"]
    refused(cluster, bad, "spec.destination: Required value")
    repo, release, kustomization = load("flux-helmrelease.yaml")
    bad = copy.deepcopy(release)
    bad["spec"]["install"]["crds"] = "Always"
    refused(cluster, bad, "spec.install.crds: Unsupported value")
    bad = copy.deepcopy(kustomization)
    del bad["spec"]["sourceRef"]
    refused(cluster, bad, "spec.sourceRef: Required value")
    bad = copy.deepcopy(repo)
    bad["spec"]["url"] = "git@github.com:lathe-dev/lathe"
    refused(cluster, bad, "spec.url")


def test_examples_point_at_this_repository():
    (app, digits_app), (repo, release, kustomization) = load("argocd-application.yaml"), load("flux-helmrelease.yaml")
    assert app["spec"]["source"]["repoURL"] == digits_app["spec"]["source"]["repoURL"] == repo["spec"]["url"]
    assert (ROOT / app["spec"]["source"]["path"]) == CHART
    assert (ROOT / release["spec"]["chart"]["spec"]["chart"]).resolve() == CHART
    include = digits_app["spec"]["source"]["directory"]["include"]
    assert (ROOT / digits_app["spec"]["source"]["path"] / include).is_file()
    assert (ROOT / kustomization["spec"]["path"] / "kustomization.yaml").is_file()
    assert release["spec"]["chart"]["spec"]["sourceRef"] == {"kind": "GitRepository", "name": repo["metadata"]["name"]}
    assert kustomization["spec"]["sourceRef"] == {"kind": "GitRepository", "name": repo["metadata"]["name"]}


def _unknown_keys(given: dict, defaults: dict, path: str = "") -> list[str]:
    out = []
    for k, v in given.items():
        if k not in defaults:
            out.append(path + k)
        elif isinstance(v, dict) and isinstance(defaults[k], dict) and defaults[k]:
            out += _unknown_keys(v, defaults[k], f"{path}{k}.")
    return out


def gitops_values() -> dict[str, dict]:
    (app, _), (_, release, _) = load("argocd-application.yaml"), load("flux-helmrelease.yaml")
    return {"argocd": app["spec"]["source"]["helm"]["valuesObject"], "flux": release["spec"]["values"]}


@pytest.mark.parametrize("tool", ["argocd", "flux"])
def test_what_they_install_is_accepted(cluster, tool):
    """The chart with the example's values: only keys values.yaml has, and the API server takes
    every object (the CRD itself is installed by the control plane already)."""
    values = gitops_values()[tool]
    assert _unknown_keys(values, yaml.safe_load((CHART / "values.yaml").read_text())) == []
    accepted(cluster, render(values, name="lathe", namespace="lathe-system"))


def test_flux_kustomization_builds_the_digits_resource(cluster):
    out = cluster("kustomize", "--load-restrictor", "LoadRestrictionsNone", str(EXAMPLES / "digits"))
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert [(d["kind"], d["metadata"].get("namespace")) for d in docs] == [("Namespace", None),
                                                                           ("ModelOptimization", "ml")]
    accepted(cluster, docs)


def test_service_monitor_is_accepted_by_the_prometheus_operator_crd(cluster):
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "scrapeTimeout": "10s",
                                                  "labels": {"release": "kube-prometheus-stack"}}}},
                  name="lathe", namespace="lathe-system")
    (sm,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert accepted(cluster, [sm]) == ["servicemonitor.monitoring.coreos.com/lathe-operator created (server dry run)"]
    bad = copy.deepcopy(sm)
    bad["spec"]["endpoints"][0]["interval"] = "30 seconds"
    refused(cluster, bad, "spec.endpoints[0].interval")
