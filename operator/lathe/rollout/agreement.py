"""What "the canary answers like stable" means for a resource (pure): the router's comparison from the
task's metric, and the least agreement from the accuracy budget when the analysis does not set one.

Why those floors: a canary whose top-1 accuracy is d below stable's changed at least d of the answers,
and up to 2d changes can cancel out in the accuracy figure, so 1 - 2 x maxAccuracyDrop is the least
agreement the budget allows on labelled data; for embeddings the budget already bounds the mean cosine
similarity to the baseline, which is what the router measures. For causal LMs the router scores stable's
continuations on both versions (llm_router_model.py), and the budget's own token figures are the floors."""

from __future__ import annotations

from lathe.api.spec import Budget, ModelOptimizationSpec, Rollout, metric_of

from .machine import DEFAULT_MAX_PERPLEXITY_RATIO, DEFAULT_MIN_TOKEN_AGREEMENT
from .router import Compare, compare_for

FLOOR_RANGE = (0.5, 0.999)
LLM_SCORING_TIMEOUT_MS = 30000


def min_agreement_for(spec: ModelOptimizationSpec) -> tuple[float, str]:
    """(floor, how it was derived)."""
    from lathe.evaluate.budget import effective_budget

    metric = str(metric_of(spec))
    b, _ = effective_budget(spec.budget, metric)
    drop = b.get("max_accuracy_drop")
    if drop is None:  # a relative budget (regression metrics): the share of outputs within tolerance
        drop = b.get("max_relative_drop") or 0.01
    raw = 1 - drop if metric == "cosine" else 1 - 2 * drop
    floor = round(min(max(raw, FLOOR_RANGE[0]), FLOOR_RANGE[1]), 6)
    how = f"1 - {'' if metric == 'cosine' else '2 x '}budget {drop:g} ({metric})"
    return floor, how


def token_thresholds(budget: Budget) -> tuple[float, float]:
    """Causal LMs: (least next-token agreement, largest perplexity ratio) for the token canary, from the same
    budget the worker judged the candidate by: minTokenAgreement, 1 + maxPerplexityIncrease (their defaults
    when unset). The worker measures both against the FP32 model on the validation text; the canary measures
    them against stable on stable's own continuations of live prompts."""
    agree = budget.min_token_agreement if budget.min_token_agreement is not None else DEFAULT_MIN_TOKEN_AGREEMENT
    inc = budget.max_perplexity_increase
    ratio = 1 + inc if inc is not None else DEFAULT_MAX_PERPLEXITY_RATIO
    return agree, round(ratio, 6)


def is_causal_lm(spec: ModelOptimizationSpec) -> bool:
    return str(spec.task.type) == "causal-lm"


def with_defaults(rollout: Rollout, spec: ModelOptimizationSpec | None) -> Rollout:
    """The rollout with analysis.minAgreement (and for causal LMs maxPerplexityRatio) filled in from the
    resource's budget; figures the analysis sets itself win."""
    if spec is None:
        return rollout
    a = rollout.analysis
    if is_causal_lm(spec):
        agree, ratio = token_thresholds(spec.budget)
        update = {k: v for k, v in (("min_agreement", agree), ("max_perplexity_ratio", ratio))
                  if getattr(a, k) is None}
    elif a.min_agreement is None:
        update = {"min_agreement": min_agreement_for(spec)[0]}
    else:
        update = {}
    if not update:
        return rollout
    return rollout.model_copy(update={"analysis": a.model_copy(update=update)})


def compare_of(rollout: Rollout, spec: ModelOptimizationSpec | None) -> Compare:
    a = rollout.analysis
    if spec is None:
        return Compare(tolerance=a.agreement_tolerance, timeout_ms=a.mirror_timeout_ms)
    if is_causal_lm(spec):
        # Each scoring call is a prefill of prompt + continuation, made after the client's stream has ended:
        # waiting costs clients nothing, so the default is long enough for a loaded CPU.
        timeout = a.mirror_timeout_ms if "mirror_timeout_ms" in a.model_fields_set else LLM_SCORING_TIMEOUT_MS
        return Compare(kind="tokens", tolerance=a.agreement_tolerance, timeout_ms=timeout)
    return compare_for(str(metric_of(spec)), spec.task.output, a.agreement_tolerance, a.mirror_timeout_ms)
