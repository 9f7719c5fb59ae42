"""The operator's own checks of a schema-valid spec (controller/validate.py `problems`): locations the
worker cannot fetch or write, and settings nothing would use, are refused naming their field."""

from __future__ import annotations

import pytest

from lathe.api.spec import ModelOptimizationSpec
from lathe.controller.validate import problems

SHA = "a" * 64


def spec(**over) -> ModelOptimizationSpec:
    body = {"model": {"uri": "pvc://m/model.onnx"}, "data": {"validation": {"uri": "pvc://m/val.npz"}}}
    body.update(over)
    return ModelOptimizationSpec.model_validate(body)


def test_a_plain_spec_has_no_problems():
    assert problems(spec()) == []
    assert problems(spec(publish={"repository": "pvc://triton-models/", "modelName": "m", "tritonUrl": "t:8000",
                                  "rollout": {}})) == []


@pytest.mark.parametrize("data, field", [
    ({"validation": {"uri": "https://example.com/val.npz"}}, "spec.data.validation.sha256"),
    ({"validation": {"uri": "pvc://m/val.npz"}, "calibration": {"uri": "https://example.com/cal.npz"}},
     "spec.data.calibration.sha256"),
])
def test_https_data_needs_a_sha256(data, field):
    assert problems(spec(data=data)) == [
        f"{field}: required for an https:// data set (the worker verifies what it downloads)"]


def test_https_data_with_a_sha256_and_https_model_rule():
    assert problems(spec(data={"validation": {"uri": "https://example.com/val.npz", "sha256": SHA},
                               "calibration": {"uri": "https://example.com/cal.npz", "sha256": SHA}})) == []
    assert problems(spec(model={"uri": "https://example.com/m.onnx"})) == [
        "spec.model.sha256: required for an https:// model (the worker verifies what it downloads)"]
    assert problems(spec(model={"uri": "https://example.com/m.onnx", "sha256": SHA})) == []


def test_data_sha256_has_the_models_pattern():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="sha256"):
        spec(data={"validation": {"uri": "https://example.com/val.npz", "sha256": "not-a-digest"}})


def test_https_sha_is_checked_before_reachability():
    asked = []
    out = problems(spec(data={"validation": {"uri": "https://example.com/val.npz"}}),
                   reachable=lambda uri: asked.append(uri))
    assert out == ["spec.data.validation.sha256: required for an https:// data set "
                   "(the worker verifies what it downloads)"]
    assert "https://example.com/val.npz" in asked  # still probed: both problems are worth knowing


S3_LOCATIONS = dict(model={"uri": "s3://bucket/model.onnx"},
                    data={"validation": {"uri": "s3://bucket/val.npz"}, "calibration": {"uri": "s3://bucket/cal.npz"}},
                    publish={"repository": "s3://bucket/repo", "modelName": "m"}, artifacts="s3://bucket/artifacts")


def test_s3_locations_need_spec_storage_s3_naming_each_field():
    asked = []
    out = problems(spec(**S3_LOCATIONS), reachable=lambda uri: asked.append(uri))
    fields = ["spec.model.uri", "spec.data.validation.uri", "spec.data.calibration.uri",
              "spec.publish.repository", "spec.artifacts"]
    assert [p.split(": ", 1)[0] for p in out] == fields
    assert all("set spec.storage.s3.secretRef" in p for p in out)
    assert asked == []  # nothing to probe for a location refused outright
    ok = spec(**S3_LOCATIONS, storage={"s3": {"secretRef": "creds", "endpoint": "http://minio.storage:9000"}})
    assert problems(ok, reachable=lambda uri: asked.append(uri)) == [] and asked == []


def test_s3_secret_must_exist_with_both_keys_and_values_are_never_read():
    ok = spec(**S3_LOCATIONS, storage={"s3": {"secretRef": "creds"}})
    looked = []

    def keys(found):
        return lambda name: looked.append(name) or found

    assert problems(ok, secret_keys=keys({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ca.crt"})) == []
    assert problems(ok, secret_keys=keys("Secret 'creds' not found in namespace ns")) == [
        "spec.storage.s3.secretRef: Secret 'creds' not found in namespace ns"]
    assert problems(ok, secret_keys=keys({"AWS_ACCESS_KEY_ID"})) == [
        "spec.storage.s3.secretRef: Secret 'creds' has no key AWS_SECRET_ACCESS_KEY (keys present: AWS_ACCESS_KEY_ID)"]
    assert looked == ["creds"] * 3


def test_s3_locations_of_objects_and_a_rollout_from_s3():
    st = {"s3": {"secretRef": "creds"}}
    out = problems(spec(model={"uri": "s3://bucket/"}, storage=st))
    assert out == ["spec.model.uri: s3://bucket/: expected s3://bucket/key of an object"]
    assert problems(spec(publish={"repository": "s3://bucket/repo", "modelName": "m", "tritonUrl": "t:8000",
                                  "rollout": {}}, storage=st)) == []


def test_triton_url_without_a_rollout_is_refused():
    base = {"repository": "pvc://triton-models/", "modelName": "m"}
    assert problems(spec(publish={**base, "tritonUrl": "triton:8000"})) == [
        "spec.publish.tritonUrl: only used by a rollout: add spec.publish.rollout or remove it"]
    assert problems(spec(publish=base)) == []  # publish to the repository alone is fine
    assert problems(spec(publish={**base, "tritonUrl": "triton:8000", "rollout": {}})) == []


def test_problems_add_up():
    out = problems(spec(data={"validation": {"uri": "https://example.com/val.npz"}},
                        artifacts="s3://bucket/a",
                        publish={"repository": "https://example.com/repo", "modelName": "m", "tritonUrl": "t:8000"}))
    assert [p.split(": ", 1)[0] for p in out] == [
        "spec.data.validation.sha256", "spec.publish.repository", "spec.artifacts", "spec.publish.tritonUrl"]
    assert "https:// can only be read, not written" in out[1]


def test_mirroring_needs_lathes_router_and_a_weight_0_step_needs_mirroring():
    base = {"repository": "pvc://triton-models/", "modelName": "m", "tritonUrl": "t:8000"}
    gw = problems(spec(publish={**base, "rollout": {"router": "gateway", "steps": [{"weight": 10, "mirror": 10}]}}))
    assert gw == ["spec.publish.rollout.steps[0].mirror: answers are compared by Lathe's router only (router: "
                  "triton); with router: gateway, mirror with the HTTPRoute's RequestMirror filter yourself "
                  "(docs/serving.md) and set mirror: 0"]
    dead = problems(spec(publish={**base, "rollout": {"steps": [{"weight": 0}, {"weight": 100}]}}))
    assert dead == ["spec.publish.rollout.steps[0]: weight 0 sends the canary nothing; give it a weight, "
                    "or mirror > 0 for a shadow step"]
    # the default steps (a shadow step first) are valid for the triton router
    assert problems(spec(publish={**base, "rollout": {}})) == []
    assert problems(spec(publish={**base, "rollout": {"router": "gateway", "steps": [{"weight": 50}]}})) == []
    assert problems(spec(publish={**base, "rollout": {"router": "gateway"}})) == []  # its defaults do not mirror


def test_a_capture_needs_lathes_router_and_somewhere_to_go():
    base = {"repository": "pvc://triton-models/", "modelName": "m", "tritonUrl": "t:8000"}
    on = {"enabled": True}
    assert problems(spec(publish={**base, "rollout": {"capture": on}})) == [
        "spec.publish.rollout.capture.uri: say where the capture goes (or set spec.artifacts: it then goes under "
        "<artifacts>/<namespace>/<name>/generation-<n>/capture)"]
    assert problems(spec(artifacts="pvc://keep/", publish={**base, "rollout": {"capture": on}})) == []
    assert problems(spec(publish={**base, "rollout": {"router": "gateway", "capture": {**on, "uri": "/c"}}})) == [
        "spec.publish.rollout.capture.enabled: inputs are captured by Lathe's router only (router: triton)"]
    assert problems(spec(publish={**base, "rollout": {"capture": {**on, "uri": "s3://b/c"}}})) == [
        "spec.publish.rollout.capture.uri: s3:// needs credentials: set spec.storage.s3.secretRef to a Secret "
        "with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"]
    assert problems(spec(publish={**base, "rollout": {"capture": {"uri": "https://x/c"}}})) == []  # off: unused


def test_gcs_and_azure_locations_need_their_storage_entry_and_secret_keys():
    gs = dict(model={"uri": "gs://bucket/model.onnx"}, data={"validation": {"uri": "gs://bucket/val.npz"}},
              artifacts="gs://bucket/artifacts")
    out = problems(spec(**gs))
    assert [p.split(": ", 1)[0] for p in out] == ["spec.model.uri", "spec.data.validation.uri", "spec.artifacts"]
    assert all("gs:// needs credentials: set spec.storage.gcs.secretRef to a Secret with service-account.json" in p
               for p in out)
    az = dict(model={"uri": "az://container/model.onnx"}, data={"validation": {"uri": "az://container/"}})
    out = problems(spec(**az, storage={"azure": {"secretRef": "az-creds"}}))
    assert out == ["spec.data.validation.uri: az://container/: expected az://container/key of an object"]
    assert "set spec.storage.azure.secretRef to a Secret with AZURE_STORAGE_ACCOUNT_NAME and " \
           "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN" in problems(spec(**az))[0]
    both = spec(**gs, storage={"gcs": {"secretRef": "gcs-key"}, "azure": {"secretRef": "az-creds"}})
    secrets = {"gcs-key": {"service-account.json"}, "az-creds": {"AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_SAS_TOKEN"}}
    assert problems(both, secret_keys=secrets.__getitem__) == []
    secrets = {"gcs-key": {"key.json"}, "az-creds": {"AZURE_STORAGE_ACCOUNT_NAME"}}
    assert problems(both, secret_keys=secrets.__getitem__) == [
        "spec.storage.gcs.secretRef: Secret 'gcs-key' has no key service-account.json (keys present: key.json)",
        "spec.storage.azure.secretRef: Secret 'az-creds' has no key AZURE_STORAGE_ACCOUNT_KEY or "
        "AZURE_STORAGE_SAS_TOKEN (keys present: AZURE_STORAGE_ACCOUNT_NAME)"]


def test_a_triton_repository_on_azure_is_refused_one_on_gcs_is_not():
    st = {"gcs": {"secretRef": "g"}, "azure": {"secretRef": "a"}}
    out = problems(spec(storage=st, publish={"repository": "az://container/repo", "modelName": "m"}))
    assert len(out) == 1 and out[0].startswith("spec.publish.repository: az:// cannot hold a Triton repository: ")
    assert "blob.core.windows.net" in out[0]
    assert problems(spec(storage=st, publish={"repository": "gs://bucket/repo", "modelName": "m"})) == []
    # az:// is fine for everything Triton does not read
    assert problems(spec(storage=st, model={"uri": "az://c/model.onnx"}, artifacts="az://c/artifacts")) == []


def test_the_genai_flavour_and_causal_lm_go_together():
    base = {"repository": "pvc://triton-models/", "modelName": "m"}
    assert problems(spec(publish={**base, "flavour": "genai"})) == [
        "spec.publish.flavour: genai serves causal LMs (task causal-lm, runtime onnxruntime-genai); use auto for "
        "this task"]
    llm = spec(model={"uri": "pvc://m/smollm2", "format": "hf"}, task={"type": "causal-lm"},
               data={"validation": {"uri": "pvc://m/val.jsonl"}},
               publish={**base, "flavour": "python", "tritonUrl": "t:8000",
                        "rollout": {"capture": {"enabled": True, "uri": "/c"}}})
    assert problems(llm) == [
        "spec.publish.flavour: a causal LM is served as genai (a decoupled model that streams tokens), not python; "
        "use auto or genai",
        "spec.publish.rollout.capture.enabled: live prompts of causal LMs are not captured (the streaming router "
        "samples nothing); set enabled: false"]
    ok = llm.model_copy(update={"publish": llm.publish.model_copy(update={
        "flavour": "auto", "rollout": llm.publish.rollout.model_copy(update={"capture": llm.publish.rollout.capture
                                                                            .model_copy(update={"enabled": False})})})})
    assert problems(ok) == []
