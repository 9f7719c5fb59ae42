"""Pass registry, spec validation and the default candidate set.

Importing this module is cheap (pydantic only): the operator uses `validate_candidates(spec)` to
reject bad candidates before any Job starts. Each pass imports onnxruntime/torch inside `run()`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ...api.spec import Candidate, Fallback, ModelOptimizationSpec, PassSpec, runtimes_of
from .base import ModelState, Pass, PassConfig, PassContext
from .distill import Distill
from .graph_optimize import GraphOptimize
from .graph_precision import GraphPrecision
from .nncf_quantize import NNCFQuantize, openvino_candidates
from .prune import Prune
from .quantize import Quantize
from .static_shapes import StaticShapes
from .weight_only import WeightOnlyQuantize

__all__ = ["PASSES", "Pass", "PassConfig", "PassContext", "ModelState", "register_pass", "make_pass",
           "validate_candidates", "default_candidates", "tensorrt_candidates", "candidate_problems"]

PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    PASSES[cls.name] = cls
    return cls


for _cls in (Quantize, Prune, Distill, GraphOptimize, StaticShapes):
    register_pass(_cls)

# the same pass type run by another engine on some runtimes: (type, runtime) -> class
RUNTIME_PASSES: dict[tuple[str, str], type[Pass]] = {("quantize", "openvino"): NNCFQuantize,
                                                     ("quantize", "tensorrt"): GraphPrecision,
                                                     ("quantize", "onnxruntime-genai"): WeightOnlyQuantize}
# runtime onnxruntime-genai builds causal LMs: weight-only quantization is its only pass
RUNTIME_ONLY_PASSES: dict[str, tuple[str, ...]] = {"onnxruntime-genai": ("quantize",)}


def pass_class(type_: str, runtime: str | None = None) -> type[Pass] | None:
    return RUNTIME_PASSES.get((type_, str(runtime))) or PASSES.get(type_)


def _settings(p: PassSpec) -> dict[str, Any]:
    return p.model_dump(exclude_unset=True, exclude_none=True, exclude={"type"})


def make_pass(p: PassSpec, runtime: str | None = None) -> Pass:
    cls = pass_class(p.type, runtime) or PASSES[p.type]
    return cls(cls.Config.model_validate(_settings(p)))


def _alias(field: str) -> str:
    return PassSpec.model_fields[field].alias or field if field in PassSpec.model_fields else field


def candidate_problems(spec: ModelOptimizationSpec, index: int, cand: Candidate) -> list[str]:
    where = f"spec.candidates[{index}]"
    problems: list[str] = []
    runtime = cand.runtime or runtimes_of(spec)[0]
    runtime = str(runtime)
    if runtime == "tensorrt" and spec.target.device == "cpu":
        problems.append(f"{where}.runtime: tensorrt needs target.device gpu")
    if spec.target.runtimes and runtime not in [str(r) for r in spec.target.runtimes]:
        problems.append(f"{where}.runtime: {runtime} is not one of target.runtimes {[str(r) for r in spec.target.runtimes]}")
    quantizes = 0
    for j, p in enumerate(cand.passes):
        pw = f"{where}.passes[{j}]"
        only = RUNTIME_ONLY_PASSES.get(runtime)
        if only is not None and p.type not in only:
            problems.append(f"{pw}.type: runtime {runtime} runs only {', '.join(only)} passes, not '{p.type}'")
            continue
        cls = pass_class(p.type, runtime)
        if cls is None:
            problems.append(f"{pw}.type: unknown pass '{p.type}' (known: {', '.join(sorted(PASSES))})")
            continue
        settings = _settings(p)
        allowed = set(cls.Config.model_fields)
        for key in settings:
            if key not in allowed:
                problems.append(f"{pw}.{_alias(key)}: not a setting of pass '{p.type}'")
        try:
            cfg = cls.Config.model_validate({k: v for k, v in settings.items() if k in allowed})
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"])
                problems.append(f"{pw}.{loc}: {err['msg']}")
            continue
        for key, runtimes in cls.runtime_only.items():
            snake = next((f for f in allowed if cls.Config.model_fields[f].alias == key or f == key), key)
            if getattr(cfg, snake, None) is not None and runtime not in runtimes:
                problems.append(f"{pw}.{key}: only used by runtime {'/'.join(runtimes)} (candidate runtime is {runtime})")
        ctx = {"runtime": runtime, "format": str(spec.model.format), "index": j, "passes": cand.passes,
               "device": str(spec.target.device), "task": str(spec.task.type), "candidate": cand.name,
               "data": {"training": spec.data.training is not None, "calibration": spec.data.calibration is not None}}
        for field, msg in cls.check(cfg, ctx):
            # a field of the pass, or (starting with "spec.") a field elsewhere that the pass needs
            problems.append(f"{field}: {msg}" if field.startswith("spec.") else f"{pw}.{field}: {msg}")
        if p.type == "quantize":
            quantizes += 1
    if quantizes > 1:
        problems.append(f"{where}.passes: at most one quantize pass per candidate ({quantizes} given)")
    return problems


def validate_candidates(spec: ModelOptimizationSpec) -> list[str]:
    """Problems with spec.candidates, each naming the field path; empty when all is well."""
    problems: list[str] = []
    names: set[str] = set()
    for i, cand in enumerate(spec.candidates):
        if cand.name in names:
            problems.append(f"spec.candidates[{i}].name: duplicate candidate name '{cand.name}'")
        if cand.name == "baseline":
            problems.append(f"spec.candidates[{i}].name: 'baseline' is reserved")
        names.add(cand.name)
        problems.extend(candidate_problems(spec, i, cand))
    return problems


def _q(**kw) -> PassSpec:
    return PassSpec(type="quantize", **kw)


def default_candidates(spec: ModelOptimizationSpec, family: str | None = None,
                       runtime: str | None = None, compute_capability: str | None = None) -> list[Candidate]:
    """The search set used when spec.candidates is empty, chosen for the model family
    ('transformer' for MatMul/attention models, 'conv' for convolutional ones, 'mlp', 'other')
    and the source format (structured pruning and quantization-aware training need a PyTorch source;
    the latter also spec.data.training)."""
    runtime = runtime or str(runtimes_of(spec)[0])
    if family is None:
        family = "transformer" if str(spec.task.type) == "embedding" else "conv"
    torch_source = str(spec.model.format) in ("torchscript", "pytorch-export")
    if runtime == "openvino":
        return openvino_candidates(spec, family)
    if runtime == "tensorrt":
        return tensorrt_candidates(family, compute_capability)
    if runtime != "onnxruntime":
        return []
    fb = Fallback(enabled=True, max_float_nodes=16)
    out: list[Candidate] = [Candidate(name="ort-optimized", passes=[PassSpec(type="graph-optimize", level="extended")])]
    if family in ("transformer", "mlp"):
        out += [
            Candidate(name="int8-dynamic", passes=[_q(precision="int8", mode="dynamic", per_channel=True)],
                      fallback=fb),
            Candidate(name="int8-static", passes=[_q(precision="int8", mode="static", per_channel=True,
                                                     activation_type="uint8", weight_type="int8")],
                      fallback=fb),
            # weight-only int4 pays off for large, memory-bound MatMul models; no fallback search
            Candidate(name="int4-weights", passes=[_q(precision="int4", block_size=32)]),
        ]
    else:
        out += [
            Candidate(name="int8-static", passes=[_q(precision="int8", mode="static", per_channel=True,
                                                     activation_type="uint8", weight_type="int8")],
                      fallback=fb),
        ]
        if torch_source:
            out += [
                Candidate(name="pruned-25", passes=[PassSpec(type="prune", method="structured", sparsity=0.25)]),
                Candidate(name="pruned-25-int8", passes=[
                    PassSpec(type="prune", method="structured", sparsity=0.25),
                    _q(precision="int8", mode="static", per_channel=True)], fallback=fb),
            ]
            if spec.data.training is not None:
                # the same graph and settings as int8-static, trained through the quantizer
                out.append(Candidate(name="int8-qat", passes=[_q(precision="int8", mode="qat", per_channel=True,
                                                                 activation_type="uint8", weight_type="int8")],
                                     fallback=fb))
    return out


def _cc(compute_capability: str | None) -> tuple[int, int] | None:
    if not compute_capability:
        return None
    major, _, minor = compute_capability.partition(".")
    return int(major), int(minor or 0)


def tensorrt_candidates(family: str | None, compute_capability: str | None = None) -> list[Candidate]:
    """The default search set on runtime tensorrt, precision decided in the graph (passes/graph_precision.py):
    FP16; BF16 on compute capability 8.0 and later; INT8 Q/DQ with automatic mixed precision; FP8 Q/DQ on 8.9 and
    later; INT4 weight-only for MatMul models (transformers). `compute_capability` ("8.9") is the GPU the engine is
    built for; unknown (None) keeps every one, and each graph is still judged on the CPU before any build."""
    cc = _cc(compute_capability)
    fb = Fallback(enabled=True, max_float_nodes=16)
    out = [Candidate(name="trt-fp16", runtime="tensorrt", passes=[_q(precision="fp16")])]
    if cc is None or cc >= (8, 0):
        out.append(Candidate(name="trt-bf16", runtime="tensorrt", passes=[_q(precision="bf16")]))
    out.append(Candidate(name="trt-int8", runtime="tensorrt", passes=[_q(precision="int8")], fallback=fb))
    if cc is None or cc >= (8, 9):
        out.append(Candidate(name="trt-fp8", runtime="tensorrt", passes=[_q(precision="fp8")], fallback=fb))
    if family == "transformer" and (cc is None or cc >= (8, 0)):
        out.append(Candidate(name="trt-int4-weights", runtime="tensorrt", passes=[_q(precision="int4")]))
    return out
