"""Splitting a candidate search into build shards (spec.search.parallelism): pure, and the same in the
operator (which names the Jobs and shows each one's candidates) and in the worker (which builds its share).

    split(candidates, 3) -> [[qat, ...], [distill, ...], [int8-static, ort-optimized]]

Longest expected first: candidates are ordered by `expected_cost` (the passes that train first, then
calibration and the mixed-precision search, then plain builds) and each goes to the shard with the least
expected work so far (longest-processing-time-first), ties to the lower shard. The costs are an ordering
heuristic in rough units of one plain build, not a forecast of seconds (docs/scaling.md has the measured
parts).

The default search set (spec.candidates empty) depends on the model family, known only after intake, so
the operator cannot name its candidates. It plans the number of shards from the spec alone: at most the
size of the smallest default set any family gives (`shard_count`), so no shard is ever empty; each build
Job computes the set after intake and takes `split(...)[k - 1]`; the benchmark Job checks that the shards'
hand-overs add up to the whole set, each candidate exactly once."""

from __future__ import annotations

from lathe.api.spec import Candidate, ModelOptimizationSpec, runtimes_of

FAMILIES = ("conv", "transformer", "mlp", "other")  # what intake can report (worker/intake.py)


def expected_cost(cand: Candidate) -> float:
    """Rough build + validation work of one candidate, in plain builds."""
    cost = 1.0
    for p in cand.passes:
        if p.type == "distill":
            epochs = p.distillation.epochs if p.distillation else 10
            cost += 2.0 * epochs
        elif p.type == "quantize" and p.mode == "qat":
            cost += 4.0 * (p.qat.epochs if p.qat else 3)
        elif p.type == "prune" and p.method == "structured":
            epochs = p.fine_tune.epochs if p.fine_tune else 3
            cost += 1.0 + 3.0 * epochs
        elif p.type == "prune":
            cost += 1.0
        elif p.type == "quantize" and str(cand.runtime) == "onnxruntime-genai":  # causal LM, weight-only
            cost += {"gptq": 6.0, "awq": 12.0, "hqq": 1.0}.get(str(p.algorithm), 0.5)  # awq: numpy on the CPU
            cost += 4.0 if p.int8_sensitive else 0.0  # one INT4 ablation per MatMul
        elif p.type == "quantize":
            calibrates = p.mode == "static" or (p.mode is None and str(cand.runtime) in ("openvino", "tensorrt")
                                                and p.precision in (None, "int8", "fp8"))
            cost += 2.0 if calibrates else 0.5
        else:
            cost += 0.5
    quantized = any(p.type == "quantize" for p in cand.passes)
    if quantized and cand.fallback is not None and cand.fallback.enabled and cand.fallback.max_float_nodes > 0:
        cost += 2.0  # the mixed-precision search may run
    return cost


def split(candidates: list[Candidate], shards: int) -> list[list[Candidate]]:
    """`candidates` into `shards` lists (some empty only when there are fewer candidates than shards), each
    in the order it is built: longest expected first."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    order = sorted(range(len(candidates)), key=lambda i: (-expected_cost(candidates[i]), i))
    out: list[list[Candidate]] = [[] for _ in range(shards)]
    load = [0.0] * shards
    for i in order:
        k = min(range(shards), key=lambda s: (load[s], s))
        out[k].append(candidates[i])
        load[k] += expected_cost(candidates[i])
    return out


def default_set_sizes(spec: ModelOptimizationSpec, compute_capability: str | None = None) -> dict[str, int]:
    """Size of the default search set for each model family intake could report (task causal-lm: one set)."""
    from .passes import default_candidates  # light: pydantic only

    if str(spec.task.type) == "causal-lm":
        from .llm.candidates import default_candidates as lm_defaults  # light: pydantic only

        return {"causal-lm": len(lm_defaults(spec))}
    sizes = {}
    for family in FAMILIES:
        sizes[family] = sum(len(default_candidates(spec, family, str(rt), compute_capability))
                            for rt in runtimes_of(spec))
    return sizes


def shard_count(spec: ModelOptimizationSpec, compute_capability: str | None = None) -> int:
    """How many build Jobs a search gets: spec.search.parallelism, never more than there are candidates (for
    the default set: than the smallest one any model family gives)."""
    parallelism = spec.search.parallelism
    if parallelism <= 1:
        return 1
    known = len(spec.candidates) if spec.candidates else min(default_set_sizes(spec, compute_capability).values())
    return max(1, min(parallelism, known))


def planned_names(spec: ModelOptimizationSpec, shards: int) -> list[list[str]] | None:
    """Each shard's candidate names as the operator can know them before intake: spec.candidates split, or
    None for the default set (its candidates are named by the build Jobs' results)."""
    if not spec.candidates:
        return None
    return [[c.name for c in part] for part in split(list(spec.candidates), shards)]
