"""The chart's ServiceAccount and RBAC objects, rendered with the Helm SDK and applied to the real
API server of tests/conftest.py, one release per mode: cluster-wide (watchNamespaces empty) and
namespaced (two watched namespaces, a third one not)."""

from __future__ import annotations

import time
import uuid

import pytest
from kubernetes import client

from tests.chart.render import one, render
from tests.rbac.calls import CLUSTER_CALLS, NAMESPACED

RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


class Release:
    def __init__(self, control_plane, api: client.ApiClient, mode: str):
        self.cp, self.mode = control_plane, mode
        self.name = f"rbac-{mode[:2]}-{uuid.uuid4().hex[:5]}"
        self.ns = self.name  # the release's own namespace: the operator's ServiceAccount lives here
        self.watched = [f"{self.name}-a", f"{self.name}-b"] if mode == "namespaced" else []
        self.other = f"{self.name}-other"  # watched by nobody
        self.core, self.rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)
        for ns in (self.ns, *self.watched, self.other):
            self.core.create_namespace({"metadata": {"name": ns}})
        docs = render({"watchNamespaces": self.watched}, name=self.name, namespace=self.ns)
        self.objects = [d for d in docs if d["kind"] in RBAC_KINDS]
        control_plane.apply_yaml(self.objects)
        self.container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        self.service_account = f"{self.name}-operator"
        self.user = f"system:serviceaccount:{self.ns}:{self.service_account}"
        # the groups a real token of that ServiceAccount carries
        self.groups = ["system:serviceaccounts", f"system:serviceaccounts:{self.ns}", "system:authenticated"]
        self._settle()

    def _settle(self, timeout: float = 30.0) -> None:
        """The RBAC authorizer reads roles and bindings through an informer: wait, bounded, until the grants
        just applied count, so that no test races them on a busy machine. A grant still missing after that
        is the chart's own fault, and the tests name it."""
        calls = [(c, ns) for c in NAMESPACED for ns in self.served]
        calls += [(c, None) for c in CLUSTER_CALLS] if self.mode == "cluster" else []
        deadline = time.monotonic() + timeout
        while not all(self.allowed(g, r, v, ns) for (g, r, v), ns in calls) and time.monotonic() < deadline:
            time.sleep(0.2)

    @property
    def served(self) -> list[str]:
        """Namespaces the operator must be able to work in ("" = every namespace at once)."""
        return self.watched or [self.other, ""]

    def allowed(self, group: str, resource: str, verb: str, namespace: str | None, *, user: str | None = None,
                groups: list[str] | None = None) -> bool:
        """SubjectAccessReview as the operator's ServiceAccount (or `user`); namespace None: cluster-scoped."""
        resource, _, sub = resource.partition("/")
        attrs = client.V1ResourceAttributes(group=group, resource=resource, subresource=sub or None, verb=verb,
                                            namespace=namespace)
        review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=user or self.user, groups=groups or self.groups, resource_attributes=attrs))
        return self.authz.create_subject_access_review(review).status.allowed

    def token(self) -> str:
        req = {"spec": {"expirationSeconds": 3600}}
        return self.core.create_namespaced_service_account_token(self.service_account, self.ns, req).status.token

    def close(self) -> None:
        for d in self.objects:
            if d["kind"] == "ClusterRole":
                self.rbac.delete_cluster_role(d["metadata"]["name"])
            elif d["kind"] == "ClusterRoleBinding":
                self.rbac.delete_cluster_role_binding(d["metadata"]["name"])
        for ns in (self.ns, *self.watched, self.other):
            self.core.delete_namespace(ns)


@pytest.fixture(scope="module", params=["cluster", "namespaced"])
def release(request, control_plane, k8s_client):
    rel = Release(control_plane, k8s_client, request.param)
    yield rel
    rel.close()
