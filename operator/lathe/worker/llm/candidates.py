"""The default search set of task causal-lm (used when spec.candidates is empty): a careful few, so that the
embedded example finishes in minutes on two cores. More (block sizes, gptq, k-quant, hqq, awq, accuracy level 1,
sensitivity-ranked mixes) are opt-in through spec.candidates with the same pass settings (passes/weight_only.py);
docs/llm.md has what each measured on SmolLM2-135M."""

from __future__ import annotations

from ...api.spec import Candidate, ModelOptimizationSpec, PassSpec

RUNTIME = "onnxruntime-genai"
LM_HEAD = "/lm_head/MatMul"


def _q(**kw) -> PassSpec:
    return PassSpec(type="quantize", **kw)


def default_candidates(spec: ModelOptimizationSpec) -> list[Candidate]:
    """INT8 weights (the safe one: +0.8% perplexity on SmolLM2-135M); INT4 round to nearest, the model builder's
    default grid (the fastest, and on a small model usually far over budget: its row shows by how much); INT4 on
    a min/max grid with float offsets beside the kernel and lm_head at INT8 (exact for a Q4_1 GGUF's layers, close for
    its Q8_0 lm_head: +0.9% on SmolLM2-135M, decoding at about 1.1x INT8's speed there)."""
    return [
        Candidate(name="int8", runtime=RUNTIME, passes=[_q(precision="int8", block_size=32)]),
        Candidate(name="int4-rtn", runtime=RUNTIME, passes=[_q(precision="int4", block_size=32)]),
        Candidate(name="int4-offset", runtime=RUNTIME, passes=[_q(precision="int4", block_size=32, float_offset=True,
                                                                  int8_nodes=[LM_HEAD])]),
    ]
