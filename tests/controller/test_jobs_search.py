"""The build and benchmark Jobs of a split search (spec.search): names, placement, what the worker is told."""

import json

from kubernetes_validate import validate

from lathe.api.spec import ModelOptimizationSpec
from lathe.controller.config import OperatorConfig
from lathe.controller.jobs import job_manifest

OWNER = {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization",
         "metadata": {"name": "digits", "namespace": "ml", "uid": "u-1", "generation": 3}}


def spec(builders=None, **target):
    search = {"parallelism": 2, **({"builders": builders} if builders else {})}
    return ModelOptimizationSpec.model_validate({
        "model": {"uri": "pvc://models/digits/model.onnx"}, "data": {"validation": {"uri": "pvc://data/val.npz"}},
        "target": {"nodeSelector": {"pool": "target"}, "resources": {"requests": {"cpu": "4"}},
                   "tolerations": [{"key": "target", "operator": "Exists", "effect": "NoSchedule"}], **target},
        "search": search, "artifacts": "pvc://scratch/lathe"})


def parts(job):
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    return pod, c, {e["name"]: e.get("value") for e in c["env"]}


def test_a_build_job_is_named_by_shard_labelled_and_placed_by_builders():
    s = spec(builders={"nodeSelector": {"pool": "big-cpu"}, "resources": {"requests": {"cpu": "16", "memory": "32Gi"}},
                       "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]})
    job = job_manifest(OWNER, s, "{}", 2, OperatorConfig(), role="build", shard=2, shards=3)
    pod, c, env = parts(job)
    assert job["metadata"]["name"] == "digits-g3-a2-b2"
    labels = job["metadata"]["labels"]
    assert labels["lathe.dev/shard"] == "2" and labels["app.kubernetes.io/component"] == "builder"
    assert labels["lathe.dev/generation"] == "3" and labels["lathe.dev/attempt"] == "2"
    assert c["args"][-3:] == ["--build-only", "--shard", "2/3"]
    assert pod["nodeSelector"] == {"pool": "big-cpu"} and [t["key"] for t in pod["tolerations"]] == ["batch"]
    assert c["resources"]["requests"] == {"cpu": "16", "memory": "32Gi"}
    assert "claimName" in json.dumps(pod["volumes"]) and "scratch" in json.dumps(pod["volumes"])  # the hand-over
    assert "LATHE_FAILED_SHARDS" not in env
    validate(job, "1.33", strict=True)


def test_without_builders_a_build_job_goes_where_the_target_says():
    pod, c, _ = parts(job_manifest(OWNER, spec(), "{}", 1, OperatorConfig(), role="build", shard=1, shards=2))
    assert pod["nodeSelector"] == {"pool": "target"} and c["resources"]["requests"]["cpu"] == "4"
    assert [t["key"] for t in pod["tolerations"]] == ["target"]


def test_the_benchmark_job_runs_on_the_target_and_is_told_which_shards_failed():
    s = spec(builders={"nodeSelector": {"pool": "big-cpu"}})
    job = job_manifest(OWNER, s, "{}", 1, OperatorConfig(), role="benchmark", shards=3,
                       failed=((2, "Job digits-g3-a3-b2, exit code 137, OOMKilled"),))
    pod, c, env = parts(job)
    assert job["metadata"]["name"] == "digits-g3-a1-bench"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "benchmark"
    assert "lathe.dev/shard" not in job["metadata"]["labels"]
    assert c["args"][-2:] == ["--benchmark", "3"] and pod["nodeSelector"] == {"pool": "target"}
    assert json.loads(env["LATHE_FAILED_SHARDS"]) == {"2": "Job digits-g3-a3-b2, exit code 137, OOMKilled"}
    assert env["LATHE_BENCH_SECONDS"] == "30"
    validate(job, "1.33", strict=True)


def test_an_architecture_build_shard_keeps_its_gpu_feature_discovery_labels():
    s = spec(builders={"nodeSelector": {"pool": "gpu-build"}}, device="gpu", runtimes=["tensorrt"],
             gpu={"architectures": [{"computeCapability": "9.0", "product": "NVIDIA-H100"}]})
    arch = s.target.gpu.architectures[0]
    job = job_manifest(OWNER, s, "{}", 1, OperatorConfig(), architecture=arch, role="build", shard=1, shards=2)
    pod, c, env = parts(job)
    assert job["metadata"]["name"] == "digits-g3-a1-sm90-b1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.compute.major": "9", "nvidia.com/gpu.compute.minor": "0",
                                   "nvidia.com/gpu.product": "NVIDIA-H100", "pool": "gpu-build"}
    assert env["LATHE_GPU_ARCH"] == "9.0" and c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    bench = job_manifest(OWNER, s, "{}", 1, OperatorConfig(), architecture=arch, role="benchmark", shards=2)
    assert bench["metadata"]["name"] == "digits-g3-a1-sm90-bench"
    assert bench["spec"]["template"]["spec"]["nodeSelector"]["pool"] == "target"
    validate(job, "1.33", strict=True)
