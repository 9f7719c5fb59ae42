"""The split of a candidate list into build shards (pure): longest expected first, every candidate once."""

from lathe.api.spec import ModelOptimizationSpec
from lathe.worker.shards import expected_cost, planned_names, shard_count, split


def spec(candidates, parallelism=3, **extra):
    return ModelOptimizationSpec.model_validate({
        "model": {"uri": "m.onnx"}, "data": {"validation": {"uri": "v.npz"}}, "target": {"runtimes": ["onnxruntime"]},
        "candidates": candidates, "search": {"parallelism": parallelism}, **extra})


CANDS = [
    {"name": "ort", "passes": [{"type": "graph-optimize"}]},
    {"name": "dyn", "passes": [{"type": "quantize", "precision": "int8", "mode": "dynamic"}]},
    {"name": "static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static"}],
     "fallback": {"enabled": True}},
    {"name": "qat", "passes": [{"type": "quantize", "precision": "int8", "mode": "qat"}]},
    {"name": "distill", "passes": [{"type": "distill", "width": 0.5}]},
    {"name": "pruned", "passes": [{"type": "prune", "method": "structured", "sparsity": 0.3}]},
]


def test_training_passes_cost_most_and_plain_builds_least():
    s = spec(CANDS)
    cost = {c.name: expected_cost(c) for c in s.candidates}
    assert min(cost["distill"], cost["qat"], cost["pruned"]) > cost["static"] > cost["dyn"] > 1.0
    assert cost["ort"] < cost["static"]


def test_split_is_longest_first_balanced_and_complete():
    s = spec(CANDS)
    parts = split(list(s.candidates), 3)
    names = [[c.name for c in p] for p in parts]
    assert names[0][0] == "distill" and names[1][0] in ("qat", "pruned") and names[2][0] in ("qat", "pruned")
    assert sorted(n for p in names for n in p) == sorted(c["name"] for c in CANDS)  # each exactly once
    loads = [sum(expected_cost(c) for c in p) for p in parts]
    assert max(loads) - min(loads) <= max(expected_cost(c) for c in s.candidates)
    assert split(list(s.candidates), 3) == parts  # deterministic: operator and workers agree


def test_more_shards_than_candidates_never_plans_an_empty_job():
    s = spec(CANDS[:2], parallelism=8)
    assert shard_count(s) == 2 and planned_names(s, 2) == [["ort"], ["dyn"]]  # a tie: the spec's order
    assert shard_count(spec(CANDS, parallelism=1)) == 1
    assert planned_names(spec([], parallelism=4), 2) is None  # the default set is named after intake



def test_causal_lm_searches_split_by_their_calibration_and_count_their_own_defaults():
    lm = {"model": {"uri": "pvc://m/smollm2", "format": "hf"}, "task": {"type": "causal-lm"},
          "data": {"validation": {"uri": "pvc://m/v.jsonl"}}, "search": {"parallelism": 8}}

    def q(name, **kw):
        return {"name": name, "runtime": "onnxruntime-genai", "passes": [{"type": "quantize", "precision": "int4", **kw}]}

    s = ModelOptimizationSpec.model_validate({**lm, "candidates": [
        q("rtn"), q("hqq", algorithm="hqq"), q("gptq", algorithm="gptq"), q("awq", algorithm="awq"),
        q("mixed", int8Sensitive=8)]})
    cost = {c.name: expected_cost(c) for c in s.candidates}
    assert cost["awq"] > cost["gptq"] > cost["mixed"] > cost["hqq"] > cost["rtn"]
    assert [[c.name for c in p] for p in split(list(s.candidates), 2)] == [["awq", "rtn"], ["gptq", "mixed", "hqq"]]
    # the default set is causal-lm's own (worker/llm/candidates.py: int8, int4-rtn, int4-offset), not a CNN's
    assert shard_count(ModelOptimizationSpec.model_validate(lm)) == 3
