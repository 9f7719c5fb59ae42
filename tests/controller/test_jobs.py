"""The worker Job template: what a cluster admin will audit."""

import hashlib
import json
import re

from kubernetes_validate import validate  # strict schema check of the rendered manifest

from lathe.api.spec import ModelOptimizationSpec
from lathe.controller.config import OperatorConfig
from lathe.controller.jobs import arch_suffix, job_manifest, job_manifests, job_name, publish_job_manifest

OWNER = {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization",
         "metadata": {"name": "digits", "namespace": "ml", "uid": "u-1", "generation": 4}}


def spec(**target):
    return ModelOptimizationSpec.model_validate({
        "model": {"uri": "pvc://models/digits/model.onnx"},
        "data": {"validation": {"uri": "pvc://data/val.npz"}, "calibration": {"uri": "pvc://models/cal.npz"}},
        "target": target,
        "publish": {"repository": "pvc://triton/", "modelName": "digits"},
    })


def test_cpu_job_is_locked_down_and_owned():
    s = spec()
    job = job_manifest(OWNER, s, json.dumps({"x": 1}), 2, OperatorConfig())
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert job["metadata"]["name"] == "digits-g4-a2"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1" and job["metadata"]["ownerReferences"][0]["controller"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["models", "data", "triton"]  # each claim mounted once
    assert {"name": "LATHE_SPEC", "value": '{"x": 1}'} in c["env"]
    assert job["spec"]["backoffLimit"] == 0
    validate(job, "1.33", strict=True)


def test_gpu_job_asks_for_gpus_and_tolerates_the_taint():
    s = spec(device="gpu", runtimes=["tensorrt"], gpu={"count": 2}, nodeSelector={"gpu": "h100"},
             tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}])
    job = job_manifest(OWNER, s, "{}", 1, OperatorConfig())
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["image"] == OperatorConfig().worker_gpu_image
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert {t["key"] for t in pod["tolerations"]} == {"dedicated", "nvidia.com/gpu"}
    validate(job, "1.33", strict=True)


def test_long_names_stay_valid_and_distinct():
    a, b = job_name("x" * 70, 1, 1), job_name("x" * 69 + "y", 1, 1)
    assert len(a) <= 63 and len(b) <= 63 and a != b and a.endswith("-g1-a1")


def test_the_benchmark_budget_reaches_the_worker():
    s = spec()
    cfg = OperatorConfig.from_env({"LATHE_BENCH_SECONDS": "6"})
    env = {e["name"]: e.get("value") for e in job_manifest(OWNER, s, "{}", 1, cfg)["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["LATHE_BENCH_SECONDS"] == "6"
    default = {e["name"]: e.get("value") for e in job_manifest(OWNER, s, "{}", 1, OperatorConfig())["spec"]
               ["template"]["spec"]["containers"][0]["env"]}
    assert default["LATHE_BENCH_SECONDS"] == "30"


def test_s3_credentials_reach_the_worker_by_secret_reference_only():
    s = ModelOptimizationSpec.model_validate({
        "model": {"uri": "s3://models/digits/model.onnx"}, "data": {"validation": {"uri": "s3://data/val.npz"}},
        "storage": {"s3": {"secretRef": "s3-creds", "region": "eu-west-1"}}})
    job = job_manifest(OWNER, s, "{}", 1, OperatorConfig(),
                       {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "ca.crt"})
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": key}}}
    assert env["AWS_REGION"]["value"] == "eu-west-1"  # the spec's region wins over the Secret's
    assert "AWS_SESSION_TOKEN" not in env  # not in the Secret: not referenced (the pod would not start)
    assert env["AWS_CA_BUNDLE"]["value"] == "/etc/lathe/s3/ca.crt"
    vol = next(v for v in pod["volumes"] if v["name"] == "s3-ca")
    assert vol["secret"] == {"secretName": "s3-creds", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert pod["automountServiceAccountToken"] is False
    validate(job, "1.33", strict=True)
    # Without spec.storage.s3 nothing of the kind is added.
    plain = job_manifest(OWNER, spec(), "{}", 1, OperatorConfig(), {"AWS_ACCESS_KEY_ID"})
    assert not [e for e in plain["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"].startswith("AWS_")]


def gpu_spec(**gpu):
    return spec(device="gpu", runtimes=["tensorrt"], nodeSelector={"pool": "gpu"},
                tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                gpu=gpu)


def test_one_job_per_architecture_pinned_by_gpu_feature_discovery_labels():
    s = gpu_spec(architectures=[{"computeCapability": "8.9", "product": "NVIDIA-L4"},
                                {"computeCapability": "9.0", "nodeSelector": {"zone": "b"}}])
    jobs = job_manifests(OWNER, s, "{}", 1, OperatorConfig())
    assert [j["metadata"]["name"] for j in jobs] == ["digits-g4-a1-sm89", "digits-g4-a1-sm90"]
    l4, h100 = (j["spec"]["template"]["spec"] for j in jobs)
    assert l4["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.compute.major": "8",
                                  "nvidia.com/gpu.compute.minor": "9", "nvidia.com/gpu.product": "NVIDIA-L4"}
    assert h100["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.compute.major": "9",
                                    "nvidia.com/gpu.compute.minor": "0", "zone": "b"}
    for job, cc in zip(jobs, ("8.9", "9.0"), strict=True):
        pod = job["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["LATHE_GPU_ARCH"] == cc
        assert job["metadata"]["labels"]["lathe.dev/architecture"] == cc
        assert job["spec"]["template"]["metadata"]["labels"]["lathe.dev/architecture"] == cc
        assert [t["key"] for t in pod["tolerations"]] == ["dedicated", "nvidia.com/gpu"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        validate(job, "1.33", strict=True)


def test_no_architectures_keeps_the_single_job():
    jobs = job_manifests(OWNER, gpu_spec(), "{}", 1, OperatorConfig())
    assert [j["metadata"]["name"] for j in jobs] == ["digits-g4-a1"]
    pod = jobs[0]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert "lathe.dev/architecture" not in jobs[0]["metadata"]["labels"]
    assert all(e["name"] != "LATHE_GPU_ARCH" for e in pod["containers"][0]["env"])


def test_architecture_job_names_are_stable_valid_labels_and_distinct():
    long = "m" * 70
    names = {job_name(long, 12, 3, arch_suffix(cc)) for cc in ("8.0", "8.6", "8.9", "9.0", "10.0")}
    assert len(names) == 5
    assert names == {job_name(long, 12, 3, arch_suffix(cc)) for cc in ("8.0", "8.6", "8.9", "9.0", "10.0")}
    for n in names:
        assert len(n) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n), n
    assert job_name(long, 12, 3, "-sm100").endswith("-g12-a3-sm100")
    # the names of Jobs created before the fan-out existed are unchanged
    assert job_name("x" * 70, 1, 1) == "x" * 48 + "-" + hashlib.sha256(b"x" * 70).hexdigest()[:8] + "-g1-a1"


def test_the_publish_job_runs_on_cpu_with_the_storage_mounted():
    s = gpu_spec(architectures=[{"computeCapability": "8.9"}, {"computeCapability": "9.0"}])
    s.artifacts = "pvc://scratch/lathe"
    job = publish_job_manifest(OWNER, s, "{}", "fp16", 1, OperatorConfig())
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert job["metadata"]["name"] == "digits-g4-a1-publish"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "publisher"
    assert c["command"] == ["python", "-m", "lathe.serving.architectures"]
    assert c["image"] == OperatorConfig().worker_image and "nvidia.com/gpu" not in c["resources"]["limits"]
    assert {"name": "LATHE_PUBLISH_CANDIDATE", "value": "fp16"} in c["env"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["models", "data", "triton", "scratch"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    validate(job, "1.33", strict=True)


def test_the_worker_knows_its_memory_limit():
    """The container's limits.memory reaches the worker (Downward API), which refuses a causal LM too big for it
    before loading it (worker/llm/checkpoint.py)."""
    s = ModelOptimizationSpec.model_validate({
        "model": {"uri": "pvc://models/smollm2", "format": "hf"}, "task": {"type": "causal-lm"},
        "data": {"validation": {"uri": "pvc://data/val.jsonl"}}, "target": {"resources": {"limits": {"memory": "6Gi"}}}})
    job = job_manifest(OWNER, s, "{}", 1, OperatorConfig())
    c = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["LATHE_MEMORY_LIMIT"]["valueFrom"]["resourceFieldRef"] == {
        "containerName": c["name"], "resource": "limits.memory", "divisor": "1"}
    assert c["resources"]["limits"]["memory"] == "6Gi"
    validate(job, "1.33", strict=True)
