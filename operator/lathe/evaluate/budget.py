"""The budget gate: a verdict and a reason with numbers for every candidate."""

from __future__ import annotations

from ..api.status import CandidateResult
from .metrics import HIGHER_IS_BETTER, LABEL

# Used when the spec gives no accuracy limit at all (reported as a warning).
DEFAULT_MAX_DROP = {"top1": 0.01, "cosine": 0.01, "agreement": 0.01}
DEFAULT_MAX_RELATIVE = {"mse": 0.05, "mae": 0.05}
# Task causal-lm (spec.budget field descriptions say why these): +2% perplexity, 95% next-token agreement.
DEFAULT_MAX_PERPLEXITY_INCREASE = 0.02
DEFAULT_MIN_TOKEN_AGREEMENT = 0.95


def effective_budget(budget, metric: str, objective: str = "latency") -> tuple[dict, list[str]]:
    b = {"max_accuracy_drop": budget.max_accuracy_drop, "max_relative_drop": budget.max_relative_drop,
         "max_p99_latency_ms": budget.max_p99_latency_ms, "min_speedup": budget.min_speedup,
         "max_size_mb": budget.max_size_mb, "max_activation_out_of_range": budget.max_activation_out_of_range}
    notes = []
    if metric == "perplexity":
        notes += _perplexity_budget(budget, b)
    elif b["max_accuracy_drop"] is None and b["max_relative_drop"] is None:
        if metric in DEFAULT_MAX_DROP:
            b["max_accuracy_drop"] = DEFAULT_MAX_DROP[metric]
            notes.append(f"no accuracy budget given: using maxAccuracyDrop={DEFAULT_MAX_DROP[metric]}")
        else:
            b["max_relative_drop"] = DEFAULT_MAX_RELATIVE[metric]
            notes.append(f"no accuracy budget given: using maxRelativeDrop={DEFAULT_MAX_RELATIVE[metric]}")
    # Unless the objective is size, a candidate must be measurably faster: its speedup interval
    # lies above 1.0. A copy at 1.00x is not worth a rollout. An explicit minSpeedup: 0 says speed
    # does not matter here (a pipeline check, a model chosen for accuracy) and lifts the rule.
    b["_require_faster"] = objective != "size" and budget.min_speedup != 0
    return b, notes


def _perplexity_budget(budget, b: dict) -> list[str]:
    """maxPerplexityIncrease is the relative increase of the metric: it joins maxRelativeDrop (the stricter one
    holds); next-token agreement gets its own floor."""
    notes = []
    mpi = getattr(budget, "max_perplexity_increase", None)
    if mpi is None and b["max_accuracy_drop"] is None and b["max_relative_drop"] is None:
        mpi = DEFAULT_MAX_PERPLEXITY_INCREASE
        notes.append(f"no perplexity budget given: using maxPerplexityIncrease={mpi}")
    if mpi is not None:
        b["max_relative_drop"] = mpi if b["max_relative_drop"] is None else min(mpi, b["max_relative_drop"])
    b["max_perplexity_increase"] = b["max_relative_drop"]
    agree = getattr(budget, "min_token_agreement", None)
    if agree is None:
        agree = DEFAULT_MIN_TOKEN_AGREEMENT
        notes.append(f"no next-token agreement floor given: using minTokenAgreement={agree}")
    b["min_token_agreement"] = agree
    return notes


def token_failures(c: CandidateResult, b: dict) -> list[str]:
    """Task causal-lm: teacher-forced next-token agreement with the FP32 model below budget.minTokenAgreement."""
    floor = b.get("min_token_agreement")
    if floor is None:
        return []
    if c.token_agreement is None:
        return ["no next-token agreement measured"]
    if c.token_agreement < floor - 1e-12:
        return [f"next-token agreement {c.token_agreement:.3f} < {floor:.3f} required (minTokenAgreement)"]
    return []


def accuracy_failures(c: CandidateResult, base: CandidateResult, metric: str, b: dict) -> list[str]:
    out = []
    if c.accuracy is None or base.accuracy is None:
        return ["no accuracy measured"]
    label = LABEL[metric]
    hib = HIGHER_IS_BETTER[metric]
    word = "drop" if hib else "increase"
    d = c.accuracy_drop if c.accuracy_drop is not None else 0.0
    if b.get("max_accuracy_drop") is not None and d > b["max_accuracy_drop"] + 1e-12:
        allowed = base.accuracy - b["max_accuracy_drop"] if hib else base.accuracy + b["max_accuracy_drop"]
        out.append(f"{label} {c.accuracy:.3f} {'<' if hib else '>'} {allowed:.3f} allowed "
                   f"({word} {d:.3f} > {b['max_accuracy_drop']:.3f})")
    if b.get("max_relative_drop") is not None and c.relative_drop is not None \
            and c.relative_drop > b["max_relative_drop"] + 1e-12:
        out.append(f"{label} {c.accuracy:.4g}: relative {word} {c.relative_drop:.2%} > "
                   f"{b['max_relative_drop']:.2%} allowed (baseline {base.accuracy:.4g})")
    return out


def coverage_failures(c: CandidateResult, b: dict) -> list[str]:
    """Calibrated ranges that clip too much of what the model meets (budget.maxActivationOutOfRange)."""
    limit = b.get("max_activation_out_of_range")
    if limit is None or c.activation_out_of_range is None or c.activation_out_of_range <= limit + 1e-12:
        return []
    return [f"{c.activation_out_of_range:.2%} of the validation activations of {c.activation_out_of_range_tensor} "
            f"fall outside their calibrated range (maxActivationOutOfRange {limit:.2%})"]


def performance_failures(c: CandidateResult, b: dict) -> list[str]:
    out = []
    if b.get("_require_faster") and c.speedup is not None:
        low = c.speedup_low if c.speedup_low is not None else c.speedup
        if low <= 1.0:
            out.append(f"not measurably faster than the baseline: speedup {c.speedup_text()}, 95% interval "
                       "reaches 1.0")
    if b.get("min_speedup") is not None and c.speedup is not None and c.speedup < b["min_speedup"]:
        out.append(f"speedup {c.speedup:.2f}x < {b['min_speedup']:.2f}x required")
    if b.get("max_p99_latency_ms") is not None and c.p99_ms is not None and c.p99_ms > b["max_p99_latency_ms"]:
        out.append(f"p99 latency {c.p99_ms:.2f} ms > {b['max_p99_latency_ms']:.2f} ms allowed")
    if b.get("max_size_mb") is not None and c.size_bytes is not None and c.size_bytes / 1e6 > b["max_size_mb"]:
        out.append(f"size {c.size_bytes / 1e6:.2f} MB > {b['max_size_mb']:.2f} MB allowed")
    return out


def passed_reason(c: CandidateResult, metric: str, b: dict) -> str:
    if metric == "perplexity":
        return _passed_reason_lm(c, b)
    bits = [f"{LABEL[metric]} {c.accuracy:.4f}"]
    if c.accuracy_drop is not None:
        limit = b.get("max_accuracy_drop")
        bits.append(f"drop {c.accuracy_drop:.4f}" + (f" <= {limit:.3f}" if limit is not None else ""))
    if c.speedup is not None:
        bits.append(f"speedup {c.speedup_text()}")
    if c.p99_ms is not None:
        bits.append(f"p99 {c.p99_ms:.2f} ms")
    if c.size_ratio is not None:
        bits.append(f"size {c.size_ratio:.2f}x of baseline")
    return "within budget: " + ", ".join(bits)


def _passed_reason_lm(c: CandidateResult, b: dict) -> str:
    bits = [f"perplexity {c.accuracy:.3f}"]
    if c.relative_drop is not None:
        limit = b.get("max_relative_drop")
        bits.append(f"{c.relative_drop:+.2%}" + (f" <= +{limit:.1%}" if limit is not None else ""))
    if c.token_agreement is not None:
        bits.append(f"next-token agreement {c.token_agreement:.3f}"
                    + (f" >= {b['min_token_agreement']:.2f}" if b.get("min_token_agreement") is not None else ""))
    if c.speedup is not None:
        bits.append(f"speedup {c.speedup_text()}")
    if c.size_ratio is not None:
        bits.append(f"size {c.size_ratio:.2f}x of baseline")
    return "within budget: " + ", ".join(bits)
