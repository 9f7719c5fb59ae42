"""Smoke tests proving the test control plane (e2e/controlplane) is a real Kubernetes API server."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.waiting import wait_for

MERGE = "application/merge-patch+json"
GROUP, VERSION, PLURAL, KIND = "smoke.e2e.lathe.dev", "v1", "widgets", "Widget"
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": KIND, "listKind": "WidgetList"},
        "versions": [{
            "name": VERSION,
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1},
                            "color": {"type": "string", "enum": ["red", "blue"]},
                        },
                    },
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                },
            }},
        }],
    },
}


@pytest.fixture(scope="module")
def widgets(control_plane, k8s_client):
    ext = client.ApiextensionsV1Api(k8s_client)
    ext.create_custom_resource_definition(CRD)
    control_plane.wait_crds_established([CRD["metadata"]["name"]])
    api = client.CustomObjectsApi(k8s_client)
    # The CRD is Established; wait until its REST endpoint serves too.
    wait_for(lambda: _can_list(api), what="widgets endpoint")
    yield api
    ext.delete_custom_resource_definition(CRD["metadata"]["name"])


def _can_list(api) -> bool:
    try:
        api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        return True
    except ApiException:
        return False


def widget(name, size=1, **extra):
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name, **extra},
            "spec": {"size": size}}


def create(api, ns, body):
    return api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def get(api, ns, name):
    return api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def test_version_and_health(control_plane, k8s_client):
    info = client.VersionApi(k8s_client).get_code()
    assert info.git_version == "v1.37.2"
    assert control_plane.url.startswith("https://127.0.0.1:")
    assert control_plane.kubeconfig.exists()
    print(f"control plane ready in {control_plane.ready_seconds:.1f}s, RSS MiB {control_plane.rss_mib()}")


def test_schema_rejects_invalid_object(widgets, namespace):
    bad = [
        {"size": "big"},       # wrong type
        {"size": 0},           # below minimum
        {"color": "red"},      # required field missing
        {"size": 1, "color": "green"},  # not in enum
    ]
    for spec in bad:
        body = widget(f"bad-{uuid.uuid4().hex[:6]}")
        body["spec"] = spec
        with pytest.raises(ApiException) as e:
            create(widgets, namespace, body)
        assert e.value.status == 422, (spec, e.value.body)
    create(widgets, namespace, widget("good", size=3))


def test_status_subresource_cannot_change_spec(widgets, namespace):
    create(widgets, namespace, widget("statusful", size=1))
    widgets.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "statusful",
        {"spec": {"size": 5}, "status": {"phase": "Done"}}, _content_type=MERGE)
    obj = get(widgets, namespace, "statusful")
    assert obj["spec"]["size"] == 1
    assert obj["status"]["phase"] == "Done"
    # ... and the main resource ignores status changes.
    widgets.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "statusful",
        {"spec": {"size": 2}, "status": {"phase": "Hacked"}}, _content_type=MERGE)
    obj = get(widgets, namespace, "statusful")
    assert obj["spec"]["size"] == 2
    assert obj["status"]["phase"] == "Done"


def test_stale_resource_version_conflicts(widgets, namespace):
    create(widgets, namespace, widget("contended", size=1))
    first = get(widgets, namespace, "contended")
    fresh = dict(first, spec={"size": 2})
    widgets.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "contended", fresh)
    stale = dict(first, spec={"size": 3})  # still carries the old resourceVersion
    with pytest.raises(ApiException) as e:
        widgets.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "contended", stale)
    assert e.value.status == 409
    assert get(widgets, namespace, "contended")["spec"]["size"] == 2


def test_watch_from_resource_version_sees_only_later_events(widgets, namespace):
    before = create(widgets, namespace, widget("w-before"))
    rv = before["metadata"]["resourceVersion"]
    create(widgets, namespace, widget("w-after-1"))
    create(widgets, namespace, widget("w-after-2"))
    seen = []
    w = watch.Watch()
    for event in w.stream(widgets.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                          resource_version=rv, timeout_seconds=10):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if len(seen) >= 2:
            w.stop()
            break
    assert seen == [("ADDED", "w-after-1"), ("ADDED", "w-after-2")]


def test_finalizer_blocks_deletion_until_removed(widgets, namespace):
    create(widgets, namespace, widget("held", finalizers=["smoke.e2e.lathe.dev/hold"]))
    widgets.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")
    obj = get(widgets, namespace, "held")
    assert obj["metadata"].get("deletionTimestamp")
    time.sleep(1)
    assert get(widgets, namespace, "held")["metadata"]["finalizers"] == ["smoke.e2e.lathe.dev/hold"]
    widgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held",
                                           {"metadata": {"finalizers": None}}, _content_type=MERGE)

    def gone():
        try:
            get(widgets, namespace, "held")
            return False
        except ApiException as e:
            return e.status == 404
    wait_for(gone, timeout=10, what="finalized object to disappear")


def test_serviceaccount_without_permissions_is_forbidden(control_plane, k8s_client, namespace):
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    tr = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"audiences": [], "expirationSeconds": 600}})
    token = tr.status.token
    with control_plane.token_client(token) as sa_api:
        sa_core = client.CoreV1Api(sa_api)
        with pytest.raises(ApiException) as e:
            sa_core.list_namespaced_pod(namespace)
        assert e.value.status == 403
        # An RBAC grant makes the same call succeed: the authorizer is real and live.
        rbac = client.RbacAuthorizationV1Api(k8s_client)
        rbac.create_namespaced_role(namespace, {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": "nobody-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}]})
        wait_for(lambda: _lists_pods(sa_core, namespace), timeout=10, what="RBAC grant to apply")
        with pytest.raises(ApiException) as e:
            sa_core.list_namespaced_secret(namespace)
        assert e.value.status == 403


def _lists_pods(core, ns) -> bool:
    try:
        core.list_namespaced_pod(ns)
        return True
    except ApiException:
        return False


def test_garbage_collector_deletes_dependents(control_plane, k8s_client, namespace):
    if not control_plane.has_controller_manager:
        if os.environ.get("LATHE_CONTROLPLANE_KCM") == "0":
            pytest.skip("kube-controller-manager disabled by LATHE_CONTROLPLANE_KCM=0")
        pytest.fail("kube-controller-manager is not running; build it with e2e/controlplane/build.sh")
    core = client.CoreV1Api(k8s_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "dependent", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]}})
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone():
        try:
            core.read_namespaced_config_map("dependent", namespace)
            return False
        except ApiException as e:
            return e.status == 404
    wait_for(dependent_gone, timeout=60, interval=0.5, what="garbage collection of the dependent")


def test_repo_crds_are_established(control_plane, k8s_client):
    import yaml

    from e2e.controlplane.fixture import REPO_ROOT

    names = []
    crd_dir = REPO_ROOT / "crds"
    for f in sorted(crd_dir.glob("*.y*ml")) if crd_dir.is_dir() else []:
        names += [d["metadata"]["name"] for d in yaml.safe_load_all(f.read_text())
                  if d and d.get("kind") == "CustomResourceDefinition"]
    ext = client.ApiextensionsV1Api(k8s_client)
    for name in names:
        crd = ext.read_custom_resource_definition(name)
        assert {c.type: c.status for c in crd.status.conditions}.get("Established") == "True"
