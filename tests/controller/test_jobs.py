"""The worker Job template: what a cluster admin will audit."""

import json

from kubernetes_validate import validate  # strict schema check of the rendered manifest

from lathe.api.spec import ModelOptimizationSpec
from lathe.controller.config import OperatorConfig
from lathe.controller.jobs import job_manifest, job_name

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
