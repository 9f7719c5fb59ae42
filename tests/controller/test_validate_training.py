"""spec.data.training in the operator's checks: a location like the other data sets, never the
validation set, and required (by field path) by the passes that train."""

from __future__ import annotations

from lathe.api.spec import ModelOptimizationSpec
from lathe.controller.validate import problems

MODEL = {"uri": "pvc://m/model.pt", "format": "torchscript", "inputs": [{"name": "input", "shape": ["batch", 4]}]}
QAT = {"name": "q", "passes": [{"type": "quantize", "precision": "int8", "mode": "qat"}]}


def spec(data, candidates=()) -> ModelOptimizationSpec:
    return ModelOptimizationSpec.model_validate({"model": MODEL, "data": data, "candidates": list(candidates)})


def test_training_set_is_a_checked_location():
    val = {"uri": "pvc://m/val.npz"}
    assert problems(spec({"validation": val, "training": {"uri": "pvc://m/train.npz"}}, [QAT])) == []
    assert problems(spec({"validation": val, "training": {"uri": "https://example.com/t.npz"}}, [QAT])) == [
        "spec.data.training.sha256: required for an https:// data set (the worker verifies what it downloads)"]
    assert problems(spec({"validation": val, "training": {"uri": "s3://b/t.npz"}}, [QAT])) == [
        "spec.data.training.uri: s3:// needs credentials: set spec.storage.s3.secretRef to a Secret with "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"]
    unreachable = problems(spec({"validation": val, "training": {"uri": "pvc://m/train.npz"}}, [QAT]),
                           reachable=lambda uri: "no such claim" if "train" in uri else None)
    assert unreachable == ["spec.data.training.uri: pvc://m/train.npz is unreachable: no such claim"]


def test_training_on_the_validation_set_is_refused():
    out = problems(spec({"validation": {"uri": "pvc://m/val.npz"}, "training": {"uri": "pvc://m/val.npz"}}))
    assert out == ["spec.data.training.uri: is the validation set: candidates trained on it would be measured on "
                   "data they have seen (their accuracy optimistic); give a separate training set"]


def test_qat_without_training_data_names_the_field():
    assert problems(spec({"validation": {"uri": "pvc://m/val.npz"}}, [QAT])) == [
        "spec.data.training: required by candidate 'q' pass 0 (quantize mode qat)"]


def test_the_worker_job_mounts_the_training_claim():
    from lathe.controller.config import OperatorConfig
    from lathe.controller.jobs import job_manifest

    owner = {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization",
             "metadata": {"name": "digits", "namespace": "ml", "uid": "u-1", "generation": 1}}
    s = spec({"validation": {"uri": "pvc://m/val.npz"}, "training": {"uri": "pvc://train-data/t.npz"}}, [QAT])
    pod = job_manifest(owner, s, "{}", 1, OperatorConfig())["spec"]["template"]["spec"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["m", "train-data"]
