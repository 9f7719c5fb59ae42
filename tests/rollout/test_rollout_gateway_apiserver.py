"""The Gateway API router against the real API server with the real HTTPRoute CRD (Gateway API
v1.6.3, fetched from its Go module by e2e/controlplane/gateway_api.sh): the operator's own apply
function creates and re-weights the route, and the API server's schema refuses a bad one. No
gateway implementation runs here, so traffic through the route is not exercised."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import kubernetes
import pytest
from kubernetes import client

from lathe.api.spec import Rollout
from lathe.controller import kube
from lathe.controller.rollout_tick import _apply_manifest, gateway_options
from lathe.rollout.router import GatewayRouter, RouteRefused

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def routes(control_plane, k8s_client):
    out = subprocess.run(["bash", str(ROOT / "e2e/controlplane/gateway_api.sh")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    control_plane.install_crds([Path(out.stdout.strip().splitlines()[-1])])
    # configure the operator's shared client the way its start-up does
    kubernetes.config.load_kube_config(config_file=str(control_plane.kubeconfig))
    kube.configure()
    ns = f"gw-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(k8s_client).create_namespace({"metadata": {"name": ns}})
    api = client.CustomObjectsApi(k8s_client)
    yield ns, lambda name: api.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", ns, "httproutes", name)
    client.CoreV1Api(k8s_client).delete_namespace(ns)


def _router(ns: str, gateway: dict | None = None) -> GatewayRouter:
    rollout = Rollout.model_validate({"router": "gateway", "gateway": gateway or {
        "service": "triton-http", "port": 8000, "parentRefs": [{"name": "public", "namespace": "gateways"}],
        "hostnames": ["infer.example.com"]}})
    return GatewayRouter("digits", _apply_manifest(ns), **gateway_options(rollout, ns))


def test_route_is_created_then_reweighted(routes):
    ns, get = routes
    r = _router(ns)
    r.set_weights({3: 90, 4: 10})
    route = get("digits")
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["port"], b["weight"]) for b in refs] == [("triton-http", 8000, 90), ("triton-http", 8000, 10)]
    assert [b["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] for b in refs] == [
        "/v2/models/digits/versions/3", "/v2/models/digits/versions/4"]
    assert route["spec"]["parentRefs"][0]["name"] == "public" and route["spec"]["hostnames"] == ["infer.example.com"]
    generation = route["metadata"]["generation"]
    r.set_weights({4: 100})  # promoted: one backend left
    route = get("digits")
    assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [100]
    assert route["metadata"]["generation"] == generation + 1


def test_api_server_refuses_a_bad_route(routes):
    # A listener name the Gateway API's schema forbids, past our own structural check: the API
    # server's 422 comes back as a refused route (the step fails, traffic returns to stable).
    ns, get = routes
    r = GatewayRouter("digits", _apply_manifest(ns), namespace=ns, service="triton",
                      parent_refs=[{"name": "public", "sectionName": "Not_A_Listener"}])
    with pytest.raises(RouteRefused, match=r"HTTPRoute gw-\w+/digits: 422 .*sectionName"):
        r.set_weights({1: 100})


def test_the_resource_schema_refuses_bad_gateway_fields_first():
    from pydantic import ValidationError

    for bad in ({"hostnames": ["Not A Hostname"]}, {"parentRefs": [{"name": "g", "namespace": "Bad_NS"}]},
                {"service": "Triton_HTTP"}, {"parentRefs": []}):
        with pytest.raises(ValidationError):
            Rollout.model_validate({"router": "gateway", "gateway": bad})
