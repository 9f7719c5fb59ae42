"""Production samples (pure): what the router keeps of live traffic, and whether the calibration set
represents it.

The router (router_model.py) sends each sampled request's inputs and stable's answer, as one .npz blob,
to `<model>_capture` (capture_model.py), a bounded queue; the operator drains it every rollout tick into
part files and, when the rollout ends, merges them into `production.npz` (Lathe's data format: one array
per model input, first axis the samples, so a later resource can name it as spec.data.calibration) and
compares it with the calibration profile the worker published beside the canary version
(`calibration-profile.json`, from `profile`): the same range test the worker applies to validation
data (data.coverage), and for classification the class histogram of the answers.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from lathe.api.status import CaptureReport

ANSWER = "__lathe_answer__"  # the stable version's answer rows, beside the inputs in a blob
PROFILE_FILE = "calibration-profile.json"
MAX_POSITIONS = 16384  # per-position ranges are kept for inputs up to this many values per sample


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def rows_of(arrays: dict[str, np.ndarray]) -> int:
    return min((len(a) for a in arrays.values()), default=0)


# ------------------------------------------------------------------------------ calibration profile
def profile(feeds: dict[str, np.ndarray], answers: np.ndarray | None) -> dict:
    """What the capture is compared with: per float input its range over the whole set and per position
    (as data.coverage computes it), and the class histogram of the model's answers (classification)."""
    n = min((len(a) for a in feeds.values()), default=0)
    out: dict = {"samples": int(n), "inputs": {}, "classes": None}
    for name, a in feeds.items():
        entry: dict = {"dtype": str(a.dtype), "shape": list(a.shape[1:])}
        if a.dtype.kind == "f" and a.size:
            entry["min"], entry["max"] = float(a.min()), float(a.max())
            if a[0].size <= MAX_POSITIONS:
                entry["position_min"] = a.min(axis=0).reshape(-1).tolist()
                entry["position_max"] = a.max(axis=0).reshape(-1).tolist()
        out["inputs"][name] = entry
    if answers is not None and len(answers):
        out["classes"] = histogram(top1(answers))
    return out


def top1(answers: np.ndarray) -> np.ndarray:
    a = np.asarray(answers)
    return a.reshape(len(a), -1).argmax(1)


def histogram(classes: np.ndarray) -> dict[str, float]:
    counts = Counter(int(c) for c in classes)
    total = sum(counts.values())
    return {str(k): round(v / total, 6) for k, v in sorted(counts.items())}


# ----------------------------------------------------------------------------------------- merging
def signature(arrays: dict[str, np.ndarray]) -> tuple:
    """Rows merge into one data set only with the same per-sample shapes and dtypes."""
    return tuple(sorted((k, a.shape[1:], str(a.dtype)) for k, a in arrays.items()))


@dataclass
class Merged:
    inputs: dict[str, np.ndarray]  # production.npz
    answers: np.ndarray | None  # answers.npz
    others: list[dict[str, np.ndarray]]  # rows of other shapes (e.g. other sequence lengths), one set per shape


def group(blobs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Blobs concatenated per signature, the group with the most rows first."""
    groups: dict[tuple, list[dict[str, np.ndarray]]] = {}
    for b in blobs:
        groups.setdefault(signature(b), []).append(b)
    ranked = sorted(groups.values(), key=lambda g: -sum(rows_of(b) for b in g))
    return [{k: np.concatenate([b[k] for b in g]) for k in g[0]} for g in ranked]


def merge(blobs: list[dict[str, np.ndarray]]) -> Merged:
    """Blobs (inputs + ANSWER each) -> the largest group of one shape as the data set, the others apart."""
    joined = group(blobs)
    if not joined:
        return Merged({}, None, [])
    main = joined[0]
    answers = main.pop(ANSWER, None)
    return Merged(main, answers, joined[1:])


# -------------------------------------------------------------------------------------- comparison
def compare(prof: dict | None, inputs: dict[str, np.ndarray], answers: np.ndarray | None, *,
            max_out_of_range: float, max_class_shift: float, classification: bool) -> CaptureReport:
    rep = CaptureReport(samples=rows_of(inputs))
    if prof is None:
        rep.warnings.append(f"no {PROFILE_FILE} beside the canary version (published before Lathe kept one): "
                            "nothing to compare the capture with")
        return rep
    if not rep.samples:
        rep.warnings.append("no rows captured: nothing to compare")
        return rep
    rep.calibration_samples = prof.get("samples")
    for name, entry in (prof.get("inputs") or {}).items():
        v = inputs.get(name)
        if v is None or "min" not in entry or v.dtype.kind != "f":
            continue  # token ids and masks: ranges say nothing (as data.coverage)
        rep.out_of_range[name] = round(float(((v < entry["min"]) | (v > entry["max"])).mean()), 6)
        lo, hi = entry.get("position_min"), entry.get("position_max")
        if lo is not None and v[0].size == len(lo):
            flat = v.reshape(len(v), -1)
            rep.out_of_range[name + "@position"] = round(float(((flat < np.asarray(lo)) |
                                                               (flat > np.asarray(hi))).mean()), 6)
        if rep.out_of_range[name] > max_out_of_range:
            rep.warnings.append(f"{rep.out_of_range[name]:.1%} of the captured '{name}' values fall outside the "
                                f"calibration set's range [{entry['min']:.4g}, {entry['max']:.4g}] "
                                f"(coverage.maxOutOfRange={max_out_of_range:.1%})")
    cal_classes = prof.get("classes")
    if classification and answers is not None and len(answers) and cal_classes:
        prod = histogram(top1(answers))
        rep.class_histogram, rep.calibration_class_histogram = prod, cal_classes
        keys = set(prod) | set(cal_classes)
        rep.class_shift = round(0.5 * sum(abs(prod.get(k, 0.0) - cal_classes.get(k, 0.0)) for k in keys), 6)
        rep.class_shift_p = shift_p_value(cal_classes, rep.samples, rep.class_shift)
        rep.unseen_classes = sorted(int(k) for k in prod if k not in cal_classes)
        if rep.class_shift > max_class_shift and rep.class_shift_p < SHIFT_P:
            rep.warnings.append(f"stable's answers on production differ from the calibration set's class mix by "
                                f"{rep.class_shift:.2f} (total variation; capture.maxClassShift={max_class_shift:g}; "
                                f"p={rep.class_shift_p:.4f} that {rep.samples} draws of the calibration mix differ "
                                "this much)")
        if rep.unseen_classes:
            rep.warnings.append(f"production has class(es) {rep.unseen_classes} never answered on the calibration set")
    rep.representative = not rep.warnings
    return rep


SHIFT_P = 0.01  # a shift is reported only when sampling noise alone would rarely (< 1%) produce it
_DRAWS = 4000


def shift_p_value(cal: dict[str, float], n: int, shift: float) -> float:
    """How often `n` answers drawn from the calibration mix differ from it by at least `shift` (total
    variation): a capture of 50 rows differs from any mix of 10 classes by ~0.17 by chance alone, so the
    threshold alone would cry wolf on small captures. Monte Carlo with a fixed seed: the same figure on
    every tick and restart."""
    p = np.array(list(cal.values()), dtype=np.float64)
    p = p / p.sum()
    draws = np.random.default_rng(0).multinomial(n, p, size=_DRAWS) / n
    tv = 0.5 * np.abs(draws - p).sum(1)
    return round(float((tv >= shift - 1e-12).mean()), 6)


def report_json(rep: CaptureReport, extra: dict) -> str:
    return json.dumps({**extra, "report": rep.model_dump(by_alias=True, mode="json")}, indent=2, sort_keys=True)
