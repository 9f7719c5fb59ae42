"""Every Kubernetes API call the operator makes, as (apiGroup, resource, verb): the code's own
calls by call site, and kopf's. The chart must grant exactly these (tests/chart), the API server
must allow them and refuse their neighbours (tests/rbac), and docs/operator.md's RBAC table lists
them with the same reasons."""

# (file under operator/lathe, client method) -> what the API server authorizes.
CODE_CALLS = {
    ("controller/reconcile.py", "get_namespaced_custom_object"): ("lathe.dev", "modeloptimizations", "get"),
    ("controller/reconcile.py", "patch_namespaced_custom_object_status"):
        ("lathe.dev", "modeloptimizations/status", "patch"),
    ("controller/reconcile.py", "create_namespaced_job"): ("batch", "jobs", "create"),
    ("controller/reconcile.py", "delete_namespaced_job"): ("batch", "jobs", "delete"),
    ("controller/reconcile.py", "read_namespaced_persistent_volume_claim"): ("", "persistentvolumeclaims", "get"),
    ("controller/reconcile.py", "create_namespaced_event"): ("", "events", "create"),
    ("controller/reconcile.py", "read_namespaced_secret"): ("", "secrets", "get"),
    ("controller/storage_secret.py", "read_namespaced_secret"): ("", "secrets", "get"),
    ("controller/report_store.py", "read_namespaced_pod_log"): ("", "pods/log", "get"),
    ("controller/report_store.py", "create_namespaced_config_map"): ("", "configmaps", "create"),
    ("controller/report_store.py", "replace_namespaced_config_map"): ("", "configmaps", "update"),
    ("controller/observe.py", "list_namespaced_job"): ("batch", "jobs", "list"),
    ("controller/observe.py", "list_namespaced_pod"): ("", "pods", "list"),
    ("controller/observe.py", "read_namespaced_pod_log"): ("", "pods/log", "get"),
    ("controller/handlers.py", "list_namespaced_job"): ("batch", "jobs", "list"),
    ("controller/handlers.py", "delete_namespaced_job"): ("batch", "jobs", "delete"),
    ("controller/rollout_tick.py", "create_namespaced_custom_object"):
        ("gateway.networking.k8s.io", "httproutes", "create"),
    ("controller/rollout_tick.py", "patch_namespaced_custom_object"):
        ("gateway.networking.k8s.io", "httproutes", "patch"),
}

# `lathe report` (report_cmd.py) runs on a user's machine with the user's kubeconfig, not as the
# operator: what it reads is the user's to be granted (get on the resource and on its ConfigMap).
CLI_CALLS = {
    ("report_cmd.py", "get_namespaced_custom_object"): ("lathe.dev", "modeloptimizations", "get"),
    ("report_cmd.py", "read_namespaced_config_map"): ("", "configmaps", "get"),
}

# kopf (standalone: no peering, no webhooks), in the watched namespaces or cluster-wide.
KOPF_CALLS = [
    ("lathe.dev", "modeloptimizations", "list"),   # the resource's watch stream
    ("lathe.dev", "modeloptimizations", "watch"),
    ("lathe.dev", "modeloptimizations", "patch"),  # the finalizer lathe.dev/finalizer
    ("batch", "jobs", "list"),                     # @kopf.on.event for the worker Jobs
    ("batch", "jobs", "watch"),
    ("", "pods", "list"),                          # @kopf.on.event for worker pods the scheduler cannot place
    ("", "pods", "watch"),
    ("", "events", "create"),                      # kopf's own Events
]

# Only cluster-wide: kopf watches CRDs to notice resources appearing. (Namespaced, it would list
# and watch namespaces and CRDs too; refused, it falls back to the named namespaces.)
CLUSTER_CALLS = [
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
]

NAMESPACED = sorted(set(CODE_CALLS.values()) | set(KOPF_CALLS))

# What a least-privilege grant must refuse: neighbours of what is used, and the usual escalations.
DENIED = [
    ("", "secrets", "list"), ("", "secrets", "watch"), ("", "secrets", "update"), ("", "secrets", "create"),
    ("", "configmaps", "get"), ("", "configmaps", "list"),
    ("", "pods", "get"), ("", "pods", "create"), ("", "pods", "delete"), ("", "pods/exec", "create"),
    ("", "serviceaccounts/token", "create"), ("", "serviceaccounts", "impersonate"),
    ("", "persistentvolumeclaims", "list"), ("", "persistentvolumeclaims", "create"),
    ("", "persistentvolumeclaims", "delete"),
    ("", "events", "patch"), ("", "events", "delete"),
    ("batch", "jobs", "get"), ("batch", "jobs", "update"), ("batch", "jobs", "patch"),
    ("batch", "cronjobs", "create"),
    ("apps", "deployments", "get"), ("apps", "deployments", "create"), ("apps", "deployments", "patch"),
    ("lathe.dev", "modeloptimizations", "create"), ("lathe.dev", "modeloptimizations", "delete"),
    ("lathe.dev", "modeloptimizations", "update"), ("lathe.dev", "modeloptimizations/status", "update"),
    ("gateway.networking.k8s.io", "httproutes", "get"), ("gateway.networking.k8s.io", "httproutes", "delete"),
    ("gateway.networking.k8s.io", "gateways", "patch"),
    ("rbac.authorization.k8s.io", "roles", "create"), ("rbac.authorization.k8s.io", "rolebindings", "create"),
]

# Cluster-scoped resources, refused in both modes.
DENIED_CLUSTER = [
    ("", "nodes", "list"), ("", "nodes", "patch"), ("", "namespaces", "create"), ("", "namespaces", "delete"),
    ("", "namespaces", "list"), ("", "persistentvolumes", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "create"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "update"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "delete"),
    ("rbac.authorization.k8s.io", "clusterroles", "escalate"), ("rbac.authorization.k8s.io", "clusterroles", "bind"),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "create"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch"),
]
