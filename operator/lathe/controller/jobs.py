"""The worker Job of a ModelOptimization (pure: spec + config -> manifest)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from lathe.api.spec import GROUP, Device, GpuArchitecture, ModelOptimizationSpec, Resources
from lathe.storage.secrets import CONTRACTS, ENDPOINT_ENV
from lathe.storage.uri import pvc_claims

from .config import OperatorConfig

NAME_LABEL = f"{GROUP}/name"
GENERATION_LABEL = f"{GROUP}/generation"
ATTEMPT_LABEL = f"{GROUP}/attempt"
COMPONENT_LABEL = "app.kubernetes.io/component"
ARCH_LABEL = f"{GROUP}/architecture"  # the compute capability a GPU build Job is for ("8.9")
SHARD_LABEL = f"{GROUP}/shard"  # a build Job's share of the candidates (spec.search.parallelism), "1".."n"
# NVIDIA GPU feature discovery's node labels (strings): what pins a build Job to one architecture
GFD_MAJOR, GFD_MINOR, GFD_PRODUCT = "nvidia.com/gpu.compute.major", "nvidia.com/gpu.compute.minor", "nvidia.com/gpu.product"
PUBLISHER = "publisher"  # COMPONENT_LABEL of the Job that assembles the architectures' engines
BUILDER, BENCHMARK = "builder", "benchmark"  # COMPONENT_LABEL of a search's build Jobs and of its benchmark Job
WORKDIR = "/lathe/work"
SCRATCH = "/lathe/tmp"  # TMPDIR and HOME: the root filesystem is read-only
TERMINATION_LOG = "/dev/termination-log"
S3_CA_DIR = CONTRACTS["s3"].ca_dir  # where spec.storage.s3's ca.crt is mounted


def arch_suffix(compute_capability: str) -> str:
    """"8.9" -> "-sm89", "10.0" -> "-sm100": the Job name's mark of its architecture."""
    return "-sm" + compute_capability.replace(".", "")


def job_name(name: str, generation: int, attempt: int, suffix: str = "") -> str:
    """A DNS label (<= 63) that is a pure function of its arguments, so a restarted operator finds
    the Jobs it created; a name too long keeps its head and a digest of the whole name."""
    tail = f"-g{generation}-a{attempt}{suffix}"
    if len(name) + len(tail) <= 63:
        return name + tail
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    tail = f"-{digest}{tail}"
    return f"{name[:63 - len(tail)]}{tail}"


def labels(name: str, generation: int | None = None, attempt: int | None = None,
           architecture: str | None = None, component: str = "worker", shard: int | None = None) -> dict[str, str]:
    out = {NAME_LABEL: name, "app.kubernetes.io/name": "lathe", COMPONENT_LABEL: component,
           "app.kubernetes.io/managed-by": "lathe-operator"}
    if generation is not None:
        out[GENERATION_LABEL] = str(generation)
    if attempt is not None:
        out[ATTEMPT_LABEL] = str(attempt)
    if architecture is not None:
        out[ARCH_LABEL] = architecture
    if shard is not None:
        out[SHARD_LABEL] = str(shard)
    return out


def architecture_selector(spec: ModelOptimizationSpec, arch: GpuArchitecture) -> dict[str, str]:
    """The nodeSelector of one architecture's build Job: the target's, then GPU feature discovery's
    compute capability (and product when named), then the architecture's own labels."""
    major, minor = arch.compute_capability.split(".")
    out = dict(spec.target.node_selector)
    out[GFD_MAJOR], out[GFD_MINOR] = major, minor
    if arch.product:
        out[GFD_PRODUCT] = arch.product
    out.update(arch.node_selector)
    return out


SecretKeyNames = frozenset[str] | set[str] | Mapping[str, "set[str] | frozenset[str]"]


def builder_placement(spec: ModelOptimizationSpec, arch: GpuArchitecture | None = None
                      ) -> tuple[dict[str, str], list[dict[str, Any]], Resources]:
    """(nodeSelector, tolerations, resources) of a build Job of spec.search: spec.search.builders' where given,
    else the target's. An architecture's GPU feature discovery labels always stay: its engines are built for
    that compute capability."""
    b = spec.search.builders
    selector = architecture_selector(spec, arch) if arch is not None else dict(spec.target.node_selector)
    if b is not None and b.node_selector:
        selector = {k: v for k, v in selector.items() if k not in spec.target.node_selector}
        if arch is None:
            selector = {}
        selector.update(b.node_selector)
    tolerations = b.tolerations if b is not None and b.tolerations else spec.target.tolerations
    resources = b.resources if b is not None and (b.resources.requests or b.resources.limits) else spec.target.resources
    return selector, [t.model_dump(by_alias=True, exclude_none=True) for t in tolerations], resources


def _keys_of(secret_keys: SecretKeyNames, secret: str) -> set[str] | frozenset[str]:
    """A Secret's key names: from a {secret: keys} map, or a plain set (the keys of spec.storage.s3's Secret)."""
    if isinstance(secret_keys, Mapping):
        return secret_keys.get(secret, set())
    return secret_keys


def store_access(spec: ModelOptimizationSpec, secret_keys: SecretKeyNames
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, mounts) that hand each spec.storage entry's Secret to the worker: values by
    secretKeyRef (the operator never copies one into the Job), only keys validation saw in the Secret
    (a missing optional key would keep the pod from starting), a ca.crt as a secret volume, the
    endpoint as a plain value (storage/secrets.py says which key goes where)."""
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.storage is None:
        return env, volumes, mounts
    for field, contract in CONTRACTS.items():
        entry = getattr(spec.storage, field)
        if entry is None:
            continue
        keys = _keys_of(secret_keys, entry.secret_ref)

        def ref(key: str, var: str, secret: str = entry.secret_ref) -> dict[str, Any]:
            return {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}

        required = {k for alts in contract.required for k in alts if len(alts) == 1}
        env += [ref(key, var) for key, var in contract.env if key in keys or key in required]
        endpoint_var = ENDPOINT_ENV[field]
        if entry.endpoint:
            env.append({"name": endpoint_var, "value": entry.endpoint.rstrip("/")})
        elif field == "s3" and "AWS_ENDPOINT_URL" in keys:
            env.append(ref("AWS_ENDPOINT_URL", endpoint_var))
        if field == "s3":
            if entry.region:
                env.append({"name": "AWS_REGION", "value": entry.region})
            elif "AWS_REGION" in keys:
                env.append(ref("AWS_REGION", "AWS_REGION"))
        if "ca.crt" in keys:
            volumes.append({"name": f"{field}-ca", "secret": {"secretName": entry.secret_ref,
                                                             "items": [{"key": "ca.crt", "path": "ca.crt"}]}})
            mounts.append({"name": f"{field}-ca", "mountPath": contract.ca_dir, "readOnly": True})
            env.append({"name": contract.ca_env, "value": f"{contract.ca_dir}/ca.crt"})
    return env, volumes, mounts


def s3_access(spec: ModelOptimizationSpec, keys: frozenset[str] | set[str]
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """store_access for spec.storage.s3 alone, given its Secret's key names."""
    if spec.storage is None or spec.storage.s3 is None:
        return [], [], []
    only_s3 = spec.model_copy(update={"storage": spec.storage.model_copy(update={"gcs": None, "azure": None})})
    return store_access(only_s3, {spec.storage.s3.secret_ref: keys})


def job_manifest(owner: dict[str, Any], spec: ModelOptimizationSpec, spec_json: str, attempt: int,
                 config: OperatorConfig, secret_keys: SecretKeyNames = frozenset(),
                 architecture: GpuArchitecture | None = None, *, role: str = "worker", shard: int | None = None,
                 shards: int = 1, failed: tuple[tuple[int, str], ...] = ()) -> dict[str, Any]:
    """The worker Job; with `architecture` (one entry of spec.target.gpu.architectures) the Job that
    builds and validates that compute capability's engines, pinned to its nodes. With spec.search split
    into `shards`: role "build" is the Job building and validating share `shard` (`lathe worker --build-only
    --shard k/n`, placed where spec.search.builders says), role "benchmark" the one timing every share's
    passed candidates on the target (`lathe worker --benchmark n`; `failed`: shards that failed for good)."""
    gpu = spec.target.device == Device.gpu
    selector = (architecture_selector(spec, architecture) if architecture is not None
                else dict(spec.target.node_selector))
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.target.tolerations]
    wanted = spec.target.resources
    if role == "build":
        selector, tolerations, wanted = builder_placement(spec, architecture)
    resources = {"requests": dict(config.cpu_resources.get("requests", {})),
                 "limits": dict(config.cpu_resources.get("limits", {}))}
    resources["requests"].update(wanted.requests)
    resources["limits"].update(wanted.limits)
    if gpu:
        # Extended resources go in limits (requests default to them); the API wants strings.
        resources["limits"][spec.target.gpu.resource_name] = str(spec.target.gpu.count)
    extra_env = [{"name": "LATHE_BENCH_SECONDS", "value": f"{config.bench_seconds:g}"}]
    if architecture is not None:
        extra_env.append({"name": "LATHE_GPU_ARCH", "value": architecture.compute_capability})
    if gpu and not any(t.get("key") == spec.target.gpu.resource_name for t in tolerations):
        tolerations.append({"key": spec.target.gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"})
    cc = architecture.compute_capability if architecture is not None else None
    suffix, args, component = (arch_suffix(cc) if cc else ""), [], "worker"
    if role == "build":
        suffix, args, component = suffix + f"-b{shard}", ["--build-only", "--shard", f"{shard}/{shards}"], BUILDER
    elif role == "benchmark":
        suffix, args, component = suffix + "-bench", ["--benchmark", str(shards)], BENCHMARK
        if failed:
            extra_env.append({"name": "LATHE_FAILED_SHARDS",
                              "value": json.dumps({str(k): why for k, why in failed}, separators=(",", ":"))})
    return _job(owner, spec, spec_json, attempt, config, secret_keys,
                image=config.worker_gpu_image if gpu else config.worker_image,
                command=list(config.worker_command), resources=resources, extra_env=extra_env,
                node_selector=selector, tolerations=tolerations, suffix=suffix, extra_args=args,
                job_labels_extra={"architecture": cc, "component": component,
                                  "shard": str(shard) if role == "build" else None})


def job_manifests(owner: dict[str, Any], spec: ModelOptimizationSpec, spec_json: str, attempt: int,
                  config: OperatorConfig, secret_keys: SecretKeyNames = frozenset()) -> list[dict[str, Any]]:
    """Every worker Job of a first attempt: one per spec.target.gpu.architectures entry (in the
    spec's order), or the one Job when the list is empty."""
    archs = spec.target.gpu.architectures if spec.target.device == Device.gpu else []
    if not archs:
        return [job_manifest(owner, spec, spec_json, attempt, config, secret_keys)]
    return [job_manifest(owner, spec, spec_json, attempt, config, secret_keys, a) for a in archs]


def publish_job_manifest(owner: dict[str, Any], spec: ModelOptimizationSpec, spec_json: str, candidate: str,
                         attempt: int, config: OperatorConfig,
                         secret_keys: SecretKeyNames = frozenset()) -> dict[str, Any]:
    """The small CPU Job that publishes `candidate`'s engines, kept by every architecture's worker
    under spec.artifacts, as one Triton version with cc_model_filenames
    (`python -m lathe.serving.architectures`). It copies files: no GPU, no model run."""
    resources = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
    return _job(owner, spec, spec_json, attempt, config, secret_keys, image=config.worker_image,
                command=list(config.publish_command), resources=resources,
                extra_env=[{"name": "LATHE_PUBLISH_CANDIDATE", "value": candidate}],
                node_selector={}, tolerations=[], suffix="-publish", job_labels_extra={"component": PUBLISHER})


def _job(owner: dict[str, Any], spec: ModelOptimizationSpec, spec_json: str, attempt: int, config: OperatorConfig,
         secret_keys: SecretKeyNames, *, image: str, command: list[str], resources: dict[str, Any],
         extra_env: list[dict[str, Any]], node_selector: dict[str, str], tolerations: list[dict[str, Any]],
         suffix: str, job_labels_extra: dict[str, str | None], extra_args: list[str] = ()) -> dict[str, Any]:
    meta = owner["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], int(meta.get("generation") or 1)
    claims = pvc_claims(spec.model.uri, spec.data.validation.uri,
                        spec.data.calibration.uri if spec.data.calibration else None,
                        spec.data.training.uri if spec.data.training else None,
                        spec.publish.repository if spec.publish else None, spec.artifacts)
    volumes: list[dict[str, Any]] = [{"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "work", "mountPath": WORKDIR}, {"name": "tmp", "mountPath": SCRATCH}]
    for i, claim in enumerate(claims):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{config.pvc_root}/{claim}"})
    s3_env, s3_volumes, s3_mounts = store_access(spec, secret_keys)
    volumes += s3_volumes
    mounts += s3_mounts

    container = {
        "name": "worker",
        "image": image,
        "imagePullPolicy": config.image_pull_policy,
        "command": command,
        "args": ["--workdir", WORKDIR, "--termination-log", TERMINATION_LOG, *extra_args],
        "env": [
            {"name": "LATHE_SPEC", "value": spec_json},
            {"name": "LATHE_PVC_ROOT", "value": config.pvc_root},
            # Explicit claim -> mount map (what lathe.storage.uri.pvc_path reads first).
            {"name": "LATHE_PVC_MOUNTS", "value": json.dumps({c: f"{config.pvc_root}/{c}" for c in claims})},
            {"name": "LATHE_RESOURCE", "value": f"{namespace}/{name}"},
            {"name": "LATHE_GENERATION", "value": str(generation)},
            # The container's memory limit in bytes (the node's allocatable memory without one): the worker
            # refuses before loading a causal LM too big for it and before timing a batch whose inputs alone
            # exceed it (worker/limits.py)
            {"name": "LATHE_MEMORY_LIMIT", "valueFrom": {"resourceFieldRef": {
                "containerName": "worker", "resource": "limits.memory", "divisor": "1"}}},
            *extra_env,
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
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations

    shard = job_labels_extra.get("shard")
    job_labels = labels(name, generation, attempt, job_labels_extra.get("architecture"),
                        job_labels_extra.get("component") or "worker", int(shard) if shard else None)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, generation, attempt, suffix),
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
