"""The worker Job of a ModelOptimization (pure: spec + config -> manifest)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lathe.api.spec import GROUP, Device, ModelOptimizationSpec
from lathe.storage.uri import pvc_claims

from .config import OperatorConfig

NAME_LABEL = f"{GROUP}/name"
GENERATION_LABEL = f"{GROUP}/generation"
ATTEMPT_LABEL = f"{GROUP}/attempt"
COMPONENT_LABEL = "app.kubernetes.io/component"
WORKDIR = "/lathe/work"
SCRATCH = "/lathe/tmp"  # TMPDIR and HOME: the root filesystem is read-only
TERMINATION_LOG = "/dev/termination-log"
S3_CA_DIR = "/etc/lathe/s3"


def job_name(name: str, generation: int, attempt: int) -> str:
    base = f"{name}-g{generation}-a{attempt}"
    if len(base) <= 63:
        return base
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:63 - len(base) + len(name) - 9]}-{digest}-g{generation}-a{attempt}"[:63]


def labels(name: str, generation: int | None = None, attempt: int | None = None) -> dict[str, str]:
    out = {NAME_LABEL: name, "app.kubernetes.io/name": "lathe", COMPONENT_LABEL: "worker",
           "app.kubernetes.io/managed-by": "lathe-operator"}
    if generation is not None:
        out[GENERATION_LABEL] = str(generation)
    if attempt is not None:
        out[ATTEMPT_LABEL] = str(attempt)
    return out


def s3_access(spec: ModelOptimizationSpec, keys: frozenset[str] | set[str]
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, mounts) that hand spec.storage.s3's Secret to the worker: values by secretKeyRef, so
    the operator never copies one into the Job; `keys`: the key names validation saw in the Secret."""
    s3 = spec.storage.s3 if spec.storage else None
    if s3 is None:
        return [], [], []

    def ref(key: str) -> dict[str, Any]:
        return {"name": key, "valueFrom": {"secretKeyRef": {"name": s3.secret_ref, "key": key}}}

    env = [ref("AWS_ACCESS_KEY_ID"), ref("AWS_SECRET_ACCESS_KEY")]
    if "AWS_SESSION_TOKEN" in keys:
        env.append(ref("AWS_SESSION_TOKEN"))
    if s3.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint.rstrip("/")})
    elif "AWS_ENDPOINT_URL" in keys:
        env.append(ref("AWS_ENDPOINT_URL"))
    if s3.region:
        env.append({"name": "AWS_REGION", "value": s3.region})
    elif "AWS_REGION" in keys:
        env.append(ref("AWS_REGION"))
    volumes, mounts = [], []
    if "ca.crt" in keys:
        volumes.append({"name": "s3-ca", "secret": {"secretName": s3.secret_ref,
                                                    "items": [{"key": "ca.crt", "path": "ca.crt"}]}})
        mounts.append({"name": "s3-ca", "mountPath": S3_CA_DIR, "readOnly": True})
        env.append({"name": "AWS_CA_BUNDLE", "value": f"{S3_CA_DIR}/ca.crt"})
    return env, volumes, mounts


def job_manifest(owner: dict[str, Any], spec: ModelOptimizationSpec, spec_json: str, attempt: int,
                 config: OperatorConfig, secret_keys: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    meta = owner["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], int(meta.get("generation") or 1)
    gpu = spec.target.device == Device.gpu
    resources = {"requests": dict(config.cpu_resources.get("requests", {})),
                 "limits": dict(config.cpu_resources.get("limits", {}))}
    resources["requests"].update(spec.target.resources.requests)
    resources["limits"].update(spec.target.resources.limits)
    if gpu:
        # Extended resources go in limits (requests default to them); the API wants strings.
        resources["limits"][spec.target.gpu.resource_name] = str(spec.target.gpu.count)

    claims = pvc_claims(spec.model.uri, spec.data.validation.uri,
                        spec.data.calibration.uri if spec.data.calibration else None,
                        spec.data.training.uri if spec.data.training else None,
                        spec.publish.repository if spec.publish else None, spec.artifacts)
    volumes: list[dict[str, Any]] = [{"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "work", "mountPath": WORKDIR}, {"name": "tmp", "mountPath": SCRATCH}]
    for i, claim in enumerate(claims):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{config.pvc_root}/{claim}"})
    s3_env, s3_volumes, s3_mounts = s3_access(spec, secret_keys)
    volumes += s3_volumes
    mounts += s3_mounts

    container = {
        "name": "worker",
        "image": config.worker_gpu_image if gpu else config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(config.worker_command),
        "args": ["--workdir", WORKDIR, "--termination-log", TERMINATION_LOG],
        "env": [
            {"name": "LATHE_SPEC", "value": spec_json},
            {"name": "LATHE_PVC_ROOT", "value": config.pvc_root},
            # Explicit claim -> mount map (what lathe.storage.uri.pvc_path reads first).
            {"name": "LATHE_PVC_MOUNTS", "value": json.dumps({c: f"{config.pvc_root}/{c}" for c in claims})},
            {"name": "LATHE_RESOURCE", "value": f"{namespace}/{name}"},
            {"name": "LATHE_GENERATION", "value": str(generation)},
            {"name": "LATHE_BENCH_SECONDS", "value": f"{config.bench_seconds:g}"},
            {"name": "HOME", "value": SCRATCH},
            {"name": "TMPDIR", "value": SCRATCH},
            *s3_env,
        ],
        "resources": resources,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # The worker writes a JSON summary there; if it dies before it can, the log tail stands in.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Workers hold no Kubernetes credentials: results travel through the termination message.
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "fsGroup": 65532},
        "containers": [container],
        "volumes": volumes,
    }
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    if spec.target.node_selector:
        pod_spec["nodeSelector"] = dict(spec.target.node_selector)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.target.tolerations]
    if gpu and not any(t.get("key") == spec.target.gpu.resource_name for t in tolerations):
        tolerations.append({"key": spec.target.gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod_spec["tolerations"] = tolerations

    job_labels = labels(name, generation, attempt)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, generation, attempt),
            "namespace": namespace,
            "labels": job_labels,
            "ownerReferences": [{
                "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": name,
                "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            # Retries are the operator's (bounded, with backoff, visible in status), not the Job's.
            "backoffLimit": 0,
            "activeDeadlineSeconds": config.active_deadline_seconds,
            "template": {"metadata": {"labels": job_labels}, "spec": pod_spec},
        },
    }
