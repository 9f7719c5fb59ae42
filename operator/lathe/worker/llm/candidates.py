"""The default search set of task causal-lm (used when spec.candidates is empty): a careful few, so that the
embedded example finishes in minutes on two cores. More (block sizes, k-quant, hqq, awq, accuracy level 1,
other mixes) are opt-in through spec.candidates with the same pass settings (passes/weight_only.py)."""

from __future__ import annotations

from ...api.spec import Candidate, ModelOptimizationSpec, PassSpec

RUNTIME = "onnxruntime-genai"


def _q(**kw) -> PassSpec:
    return PassSpec(type="quantize", **kw)


def default_candidates(spec: ModelOptimizationSpec) -> list[Candidate]:
    """INT8 weights (measured +0.7% perplexity here: the safe one); INT4 round-to-nearest, the model builder's
    default grid (fast, and on a small model usually over budget: the row shows by how much); INT4 GPTQ on the
    calibration text; INT4 with lm_head and the MatMuls an ablation finds most sensitive kept at INT8."""
    return [
        Candidate(name="int8", runtime=RUNTIME, passes=[_q(precision="int8", block_size=32)]),
        Candidate(name="int4-rtn", runtime=RUNTIME, passes=[_q(precision="int4", block_size=32)]),
        Candidate(name="int4-gptq", runtime=RUNTIME, passes=[_q(precision="int4", block_size=32, algorithm="gptq")]),
        Candidate(name="int4-mixed", runtime=RUNTIME, passes=[_q(precision="int4", block_size=32,
                                                                 int8_nodes=["/lm_head/MatMul"], int8_sensitive=16)]),
    ]
