"""Accuracy of a candidate against the labels and against the baseline's outputs.

- top1: share of samples whose argmax equals the label (without labels: agreement with the baseline)
- cosine: per-sample cosine similarity of the flattened output with the baseline's (mean and min)
- mse / mae: against the labels when they have the output's shape (regression), else the baseline
- agreement: argmax agreement with the baseline (2-D outputs), else share of samples equal within 1e-3
"""

from __future__ import annotations

import numpy as np

HIGHER_IS_BETTER = {"top1": True, "cosine": True, "agreement": True, "mse": False, "mae": False, "perplexity": False}
LABEL = {"top1": "top-1", "cosine": "mean cosine", "agreement": "agreement", "mse": "MSE", "mae": "MAE",
         "perplexity": "perplexity"}


def finite(outputs: list[np.ndarray]) -> bool:
    return all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), np.where(np.abs(a - b).max(1) == 0, 1.0, 0.0))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    if a.ndim == 2 and a.shape[1] > 1:
        return float((a.argmax(1) == b.argmax(1)).mean())
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    scale = float(np.abs(b2).max()) or 1.0
    return float((np.abs(a2 - b2).max(1) <= 1e-3 * scale).mean())


def _labels_match(out: np.ndarray, labels: np.ndarray | None) -> bool:
    return labels is not None and labels.shape == out.shape


def score(out: np.ndarray, base: np.ndarray, labels: np.ndarray | None, metric: str) -> dict[str, float]:
    """All figures for one output against the baseline output (and labels)."""
    d: dict[str, float] = {}
    cos = cosine_rows(out, base)
    d["cosine"] = float(cos.mean())
    d["min_cosine"] = float(cos.min())
    d["agreement"] = agreement(out, base)
    ref = labels.astype(np.float64) if _labels_match(out, labels) else base.astype(np.float64)
    diff = out.astype(np.float64) - ref
    d["mse"] = float((diff ** 2).mean())
    d["mae"] = float(np.abs(diff).mean())
    if labels is not None and labels.ndim == 1 and out.ndim == 2 and out.shape[1] > 1:
        d["top1"] = float((out.argmax(1) == labels).mean())
    else:
        d["top1"] = d["agreement"]
    d["value"] = d[metric]
    return d


def drop(base: float, value: float, metric: str) -> tuple[float, float | None]:
    """(absolute drop, relative drop): positive means worse than the baseline."""
    d = base - value if HIGHER_IS_BETTER[metric] else value - base
    rel = d / abs(base) if abs(base) > 1e-12 else None
    return d, rel
