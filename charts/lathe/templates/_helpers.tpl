{{/* Labels every object of the chart carries; the Deployment's selector keeps the first two only
(a selector is immutable, and release 0.1.0 shipped it so). */}}
{{- define "lathe.labels" -}}
app.kubernetes.io/name: lathe
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* What the operator itself calls, namespaced resources only, one verb per real call site, so
that the same rules serve a ClusterRole (watchNamespaces empty) and one Role per watched namespace.
docs/operator.md ("RBAC") says which code makes each call; tests/rbac checks every verb here is
granted and every neighbour is not, against a real API server. */}}
{{- define "lathe.rules" -}}
# kopf lists and watches the resource, patches its finalizer; a pass GETs it fresh.
- apiGroups: [lathe.dev]
  resources: [modeloptimizations]
  verbs: [get, list, watch, patch]
# The pass writes status as a merge patch (the operator is its only writer).
- apiGroups: [lathe.dev]
  resources: [modeloptimizations/status]
  verbs: [patch]
# kopf watches the worker Jobs; a pass lists them, creates the next attempt, deletes superseded ones.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, delete]
# A finished Job's pods: the termination message, the log tail of a failed one, the full result
# in the log of a successful one; and a pending one's (watched): is it stuck unschedulable?
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# The worker's full result, copied from its log, kept beside the resource for `lathe report`.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, update]
# Validation: spec.storage.s3.secretRef names a Secret with the keys the worker needs (the values reach
# the worker pod by secretKeyRef); a rollout from an s3:// repository reads them to edit it.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Validation: the claim behind a pvc:// URI exists.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
# One Event per transition (core v1 Events, as kopf posts them too).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.rbac.gatewayRoutes }}
# router: gateway - the canary's HTTPRoute beside the resource: create, then re-weight.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [create, patch]
{{- end }}
{{- end }}
