"""The chart's grants, asked of the real API server's RBAC authorizer (SubjectAccessReview as the
operator's ServiceAccount): every call the operator makes is allowed where it must work, and
nothing else is: not neighbouring verbs, not other namespaces when namespaced, nothing
cluster-scoped but the CRD watch of cluster-wide mode."""

from tests.rbac.calls import CLUSTER_CALLS, DENIED, DENIED_CLUSTER, NAMESPACED


def _where(ns: str | None) -> str:
    return "(cluster scope)" if ns is None else f"namespace {ns}" if ns else "(all namespaces)"


def _wrong(release, calls, namespaces, want: bool) -> list[str]:
    """The (verb, resource, where) of `calls` whose answer is not `want`."""
    return [f"{v} {r}.{g or 'core'} in {_where(ns)}"
            for g, r, v in calls for ns in namespaces if release.allowed(g, r, v, ns) is not want]


def test_every_call_the_operator_makes_is_allowed(release):
    assert _wrong(release, NAMESPACED, release.served, True) == []
    if release.mode == "cluster":
        assert _wrong(release, CLUSTER_CALLS, [None], True) == []


def test_what_the_operator_does_not_call_is_denied(release):
    assert _wrong(release, DENIED, release.served + [release.ns], False) == []
    assert _wrong(release, DENIED_CLUSTER, [None], False) == []


def test_namespaced_grants_stop_at_the_watched_namespaces(release):
    if release.mode != "namespaced":
        assert _wrong(release, NAMESPACED, [release.ns, "default", "kube-system"], True) == []  # everywhere
        return
    # Not in another namespace, not in the operator's own, not cluster-wide, no cluster-scoped grant.
    assert _wrong(release, NAMESPACED, [release.other, release.ns, "default", ""], False) == []
    assert _wrong(release, CLUSTER_CALLS, [None], False) == []
    assert not any(d["kind"].startswith("Cluster") for d in release.objects)


def test_the_denials_are_rbac_not_a_broken_review(release):
    """The same review for the admin group is allowed: a denial above is the chart's doing."""
    assert release.allowed("", "secrets", "get", release.other, user="someone", groups=["system:masters"])
