"""What "the canary answers like stable" means for a resource (pure): the router's comparison from the
task's metric, and the least agreement from the accuracy budget when the analysis does not set one.

Why those floors: a canary whose top-1 accuracy is d below stable's changed at least d of the answers,
and up to 2d changes can cancel out in the accuracy figure, so 1 - 2 x maxAccuracyDrop is the least
agreement the budget allows on labelled data; for embeddings the budget already bounds the mean cosine
similarity to the baseline, which is what the router measures."""

from __future__ import annotations

from lathe.api.spec import ModelOptimizationSpec, Rollout, metric_of

from .router import Compare, compare_for

FLOOR_RANGE = (0.5, 0.999)


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


def with_defaults(rollout: Rollout, spec: ModelOptimizationSpec | None) -> Rollout:
    """The rollout with analysis.minAgreement filled in from the resource's budget."""
    if spec is None or rollout.analysis.min_agreement is not None:
        return rollout
    floor, _ = min_agreement_for(spec)
    return rollout.model_copy(update={"analysis": rollout.analysis.model_copy(update={"min_agreement": floor})})


def compare_of(rollout: Rollout, spec: ModelOptimizationSpec | None) -> Compare:
    a = rollout.analysis
    if spec is None:
        return Compare(tolerance=a.agreement_tolerance, timeout_ms=a.mirror_timeout_ms)
    return compare_for(str(metric_of(spec)), spec.task.output, a.agreement_tolerance, a.mirror_timeout_ms)
