"""Task causal-lm at validation (controller/validate.py and the CRD's CEL rules): valid specs pass, a GPU target
is refused naming what is missing, and the LLM-only fields are refused elsewhere."""

from __future__ import annotations

import pytest

from lathe.api.crd import crd
from lathe.api.spec import ModelOptimizationSpec, metric_of, runtimes_of
from lathe.controller.validate import problems
from lathe.worker.passes import validate_candidates


def lm(**over) -> ModelOptimizationSpec:
    body = {"model": {"uri": "pvc://models/smollm2", "format": "hf"}, "task": {"type": "causal-lm"},
            "data": {"validation": {"uri": "pvc://data/val.jsonl"}}}
    body.update(over)
    return ModelOptimizationSpec.model_validate(body)


def test_a_causal_lm_spec_passes_and_takes_its_defaults():
    s = lm(publish={"repository": "pvc://triton/", "modelName": "smollm2"},
           budget={"maxPerplexityIncrease": 0.01, "minTokenAgreement": 0.97}, objective="first-token")
    assert problems(s) == []
    assert str(metric_of(s)) == "perplexity"
    assert [str(r) for r in runtimes_of(s)] == ["onnxruntime-genai"]
    assert problems(lm(model={"uri": "s3://b/smollm2.tar.gz", "format": "hf"},
                       storage={"s3": {"secretRef": "s3"}})) == []
    assert problems(lm(model={"uri": "pvc://models/m.gguf", "format": "gguf"})) == []


def test_gpu_is_refused_naming_what_is_missing():
    found = problems(lm(target={"device": "gpu"}))
    assert len(found) == 1
    assert found[0].startswith("spec.target.device: task causal-lm runs on the CPU")
    assert "TensorRT-LLM" in found[0] and "FP8/NVFP4" in found[0]


def test_the_crd_refuses_gpu_for_causal_lm_at_the_api_server():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {r["rule"]: r["message"] for r in schema["x-kubernetes-validations"]}
    rule = next(r for r, m in rules.items() if "causal-lm" in r)
    assert "self.target.device == 'cpu'" in rule and "TensorRT-LLM" in rules[rule]


@pytest.mark.parametrize("over, expected", [
    ({"model": {"uri": "pvc://m/model.onnx"}}, "spec.model.format: task causal-lm reads an hf checkpoint folder"),
    ({"task": {"type": "causal-lm", "metric": "top1"}}, "spec.task.metric: task causal-lm is measured by perplexity"),
    ({"target": {"runtimes": ["onnxruntime"]}}, "spec.target.runtimes: task causal-lm runs on onnxruntime-genai only"),
    ({"model": {"uri": "https://example.com/smollm2", "format": "hf", "sha256": "a" * 64}},
     "spec.model.uri: an hf checkpoint from an object store or https:// is one .tar or .tar.gz"),
    ({"model": {"uri": "pvc://models/smollm2", "format": "hf", "sha256": "a" * 64}},
     "spec.model.sha256: an hf checkpoint folder has no single sha256"),
    ({"publish": {"repository": "pvc://t/", "modelName": "m", "flavour": "onnxruntime"}},
     "spec.publish.flavour: a causal LM is served as genai (a decoupled model that streams tokens), not onnxruntime"),
])
def test_causal_lm_misfits_name_their_field(over, expected):
    found = problems(lm(**over))
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize("over, expected", [
    ({"model": {"uri": "pvc://m/m.gguf", "format": "gguf"}}, "spec.task.type: a gguf checkpoint is read as a causal LM"),
    ({"task": {"metric": "perplexity"}}, "spec.task.metric: perplexity measures task causal-lm only"),
    ({"objective": "first-token"}, "spec.objective: first-token is a causal-lm objective"),
    ({"budget": {"minTokenAgreement": 0.9}}, "spec.budget.minTokenAgreement: only used by task causal-lm"),
    ({"data": {"validation": {"uri": "pvc://m/v.npz"}, "prompts": {"uri": "pvc://m/p.jsonl"}}},
     "spec.data.prompts: only used by task causal-lm"),
    ({"target": {"runtimes": ["onnxruntime-genai"]}}, "spec.target.runtimes: onnxruntime-genai serves task causal-lm"),
])
def test_llm_fields_are_refused_on_other_tasks(over, expected):
    body = {"model": {"uri": "pvc://m/model.onnx"}, "data": {"validation": {"uri": "pvc://m/val.npz"}}}
    body.update(over)
    found = problems(ModelOptimizationSpec.model_validate(body))
    assert any(p.startswith(expected) for p in found), found


def test_weight_only_pass_settings_are_checked_like_every_pass():
    def cands(*passes):
        return lm(candidates=[{"name": "c", "passes": list(passes)}])

    assert validate_candidates(cands({"type": "quantize", "precision": "int4", "algorithm": "gptq",
                                      "blockSize": 64, "int8Nodes": ["/lm_head/MatMul"], "int8Sensitive": 4})) == []
    found = validate_candidates(cands({"type": "quantize", "precision": "fp16"}))
    assert found and "FP8/NVFP4 need TensorRT-LLM" in found[0]
    assert validate_candidates(cands({"type": "quantize", "precision": "int4", "blockSize": 48})) == [
        "spec.candidates[0].passes[0].blockSize: must be one of 16, 32, 64, 128, 256 (MatMulNBits blocks)"]
    assert validate_candidates(cands({"type": "quantize", "precision": "int8", "int8Sensitive": 2})) == [
        "spec.candidates[0].passes[0].int8Sensitive: only used with precision int4"]
    assert validate_candidates(cands({"type": "prune", "method": "structured"})) == [
        "spec.candidates[0].passes[0].type: runtime onnxruntime-genai runs only quantize passes, not 'prune'"]
    assert validate_candidates(cands({"type": "quantize", "mode": "static"})) == [
        "spec.candidates[0].passes[0].mode: runtime onnxruntime-genai quantizes weights only: no dynamic/static/qat mode"]
