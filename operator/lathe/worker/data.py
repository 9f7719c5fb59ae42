"""Calibration, validation and training data: one `.npz` file per set.

Format (see docs/worker.md): one array per model input, keyed by the input's name, the first axis
being the sample axis (all arrays the same length); an optional `labels` array (class ids for
classification, targets for regression), same length. Arrays keep the model's dtype
(float32 for images, int64 for token ids); float64 is cast to float32, int32 to int64 when the
model wants it. `maxSamples` keeps the first N samples.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CoverageError, InvalidInput

LABELS = "labels"

_DTYPES = {
    "float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
    "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


@dataclass
class InputMeta:
    """A model input: name, dims (int fixed, str/None dynamic) and numpy dtype name."""

    name: str
    shape: list[int | str | None]
    dtype: str = "float32"


@dataclass
class Dataset:
    path: Path
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    role: str = "validation"

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def take(self, index) -> Dataset:
        return Dataset(self.path, {k: v[index] for k, v in self.feeds.items()},
                       None if self.labels is None else self.labels[index], self.role)

    def head(self, n: int | None) -> Dataset:
        return self if n is None or n >= len(self) else self.take(slice(0, n))

    def batches(self, batch: int):
        for i in range(0, len(self), batch):
            yield {k: v[i:i + batch] for k, v in self.feeds.items()}

    def batch_of(self, n: int) -> dict[str, np.ndarray]:
        """A batch of exactly n samples (repeating the set when it is shorter)."""
        idx = np.arange(n) % len(self)
        return {k: np.ascontiguousarray(v[idx]) for k, v in self.feeds.items()}


def read_npz(path: Path, role: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise InvalidInput("data", f"{role} data {path}: not a readable .npz file ({e})") from e


def load(path: Path, inputs: list[InputMeta], role: str = "validation", max_samples: int | None = None,
         arrays: dict[str, np.ndarray] | None = None) -> Dataset:
    """Read and check a data set against the model inputs; every error names the array."""
    arrays = read_npz(path, role) if arrays is None else arrays
    where = f"{role} data {path}"
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InvalidInput("data", f"{where}: no array for model input(s) {missing}; arrays present: "
                                   f"{sorted(arrays)}; the model's inputs are {names}")
    extra = [k for k in arrays if k not in names and k != LABELS]
    if extra:
        raise InvalidInput("data", f"{where}: array(s) {extra} are not model inputs {names} (nor '{LABELS}')")
    feeds: dict[str, np.ndarray] = {}
    n = None
    for meta in inputs:
        a = arrays[meta.name]
        a = _check_array(a, meta, where)
        if n is None:
            n = len(a)
        elif len(a) != n:
            raise InvalidInput("data", f"{where}: array '{meta.name}' has {len(a)} samples, "
                                       f"'{inputs[0].name}' has {n}")
        feeds[meta.name] = a
    labels = arrays.get(LABELS)
    if labels is not None:
        if labels.ndim < 1 or len(labels) != n:
            raise InvalidInput("data", f"{where}: array '{LABELS}' has shape {labels.shape}, expected {n} samples")
        if labels.dtype.kind == "f" and not np.isfinite(labels).all():
            raise InvalidInput("data", f"{where}: array '{LABELS}' contains NaN or Inf")
    if not n:
        raise InvalidInput("data", f"{where}: no samples")
    ds = Dataset(path, feeds, labels, role)
    return ds.head(max_samples)


def check_labels(ds: Dataset, classes: int) -> None:
    """Classification: every label is a class the model can output (0 .. classes-1). A label outside would
    lower every candidate's accuracy alike and hide the mistake (a label file of another model, 1-based
    classes): refused, naming the file, the label and the class count."""
    labels = ds.labels
    if labels is None or labels.ndim != 1 or not len(labels) or labels.dtype.kind not in "iufb":
        return
    where = f"{ds.role} data {ds.path}"
    if labels.dtype.kind == "f":
        fractional = labels != np.floor(labels)
        if fractional.any():
            raise InvalidInput("data", f"{where}: label {labels[fractional][0]:g} is not a class index (the model has "
                                       f"{classes} classes, 0..{classes - 1}); {int(fractional.sum())} of "
                                       f"{len(labels)} labels are not whole numbers")
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        values = np.unique(labels[bad])
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise InvalidInput("data", f"{where}: label {values[0]:g} is outside the model's {classes} classes "
                                   f"(0..{classes - 1}): {int(bad.sum())} of {len(labels)} samples have labels the "
                                   f"model cannot produce ({shown}); is the label file for this model, and are the "
                                   "classes counted from 0?")


def _check_array(a: np.ndarray, meta: InputMeta, where: str) -> np.ndarray:
    want = np.dtype(_DTYPES.get(meta.dtype, meta.dtype))
    if a.dtype != want:
        same_kind = (a.dtype.kind == want.kind) or (a.dtype.kind in "iu" and want.kind in "iu")
        if not same_kind:
            raise InvalidInput("data", f"{where}: array '{meta.name}' has dtype {a.dtype}, the model wants {want}")
        if a.dtype.kind in "iu" and a.size and (a.min() < np.iinfo(want).min or a.max() > np.iinfo(want).max):
            raise InvalidInput("data", f"{where}: array '{meta.name}' values do not fit {want}")
        a = a.astype(want)
    if meta.shape:
        if a.ndim != len(meta.shape):
            raise InvalidInput("data", f"{where}: array '{meta.name}' has shape {list(a.shape)}, "
                                       f"the model wants rank {len(meta.shape)} {meta.shape}")
        for axis, (have, dim) in enumerate(zip(a.shape, meta.shape, strict=True)):
            if axis > 0 and isinstance(dim, int) and dim > 0 and have != dim:
                raise InvalidInput("data", f"{where}: array '{meta.name}' has shape {list(a.shape)}, "
                                           f"axis {axis} must be {dim} (model shape {meta.shape})")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise InvalidInput("data", f"{where}: array '{meta.name}' contains {bad} NaN/Inf value(s)")
    return np.ascontiguousarray(a)


@dataclass
class CoverageReport:
    samples: int
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    missing_classes: list = field(default_factory=list)
    out_of_range: float | None = None
    per_input: dict[str, float] = field(default_factory=dict)

    def raise_for_errors(self) -> None:
        if self.errors:
            raise CoverageError("calibration", "; ".join(self.errors), self.missing_classes)


def coverage(cal: Dataset, val: Dataset, cov, same_set: bool = False) -> CoverageReport:
    """Does the calibration set represent the validation set? `cov` is spec.data.coverage."""
    rep = CoverageReport(samples=len(cal))
    if same_set:
        rep.warnings.append("no calibration set given: calibrating on the validation set "
                            "(accuracy figures of calibrated candidates are optimistic)")
    if len(cal) < cov.min_samples:
        rep.errors.append(f"calibration set has {len(cal)} samples, fewer than coverage.minSamples={cov.min_samples}")
    elif len(cal) < cov.warn_samples:
        rep.warnings.append(f"calibration set has only {len(cal)} samples (coverage.warnSamples={cov.warn_samples})")
    if cal.labels is not None and val.labels is not None and cal.labels.ndim == 1 and val.labels.dtype.kind in "iub":
        missing = sorted(set(np.unique(val.labels).tolist()) - set(np.unique(cal.labels).tolist()))
        if missing:
            rep.missing_classes = missing
            msg = (f"calibration set misses class(es) {missing} present in validation "
                   f"({len(missing)} of {len(np.unique(val.labels))})")
            (rep.errors if cov.require_class_coverage else rep.warnings).append(msg)
    outside = total = 0
    for name, v in val.feeds.items():
        c = cal.feeds[name]
        if v.dtype.kind != "f":  # token ids and masks: ranges say nothing
            continue
        lo, hi = c.min(axis=0), c.max(axis=0)  # per position/channel ranges
        glo, ghi = c.min(), c.max()
        out = ((v < glo) | (v > ghi)).sum()
        share_pos = float(((v < lo) | (v > hi)).mean())
        outside += int(out)
        total += v.size
        rep.per_input[name] = round(float(out) / v.size, 6)
        rep.per_input[name + "@position"] = round(share_pos, 6)
    if total:
        rep.out_of_range = outside / total
        if rep.out_of_range > cov.max_out_of_range:
            rep.errors.append(f"{rep.out_of_range:.1%} of validation input values fall outside the calibrated "
                              f"range (coverage.maxOutOfRange={cov.max_out_of_range:.1%})")
    return rep


def shared_samples(a: Dataset, b: Dataset) -> int:
    """How many samples of `b` also occur in `a` (same values in every input array): a training set
    that contains validation samples makes the validation figures of trained candidates optimistic."""
    import hashlib  # noqa: PLC0415

    def keys(ds: Dataset) -> list[bytes]:
        out = []
        for i in range(len(ds)):
            h = hashlib.blake2b(digest_size=16)
            for name in sorted(ds.feeds):
                h.update(np.ascontiguousarray(ds.feeds[name][i]).tobytes())
            out.append(h.digest())
        return out

    seen = set(keys(a))
    return sum(k in seen for k in keys(b))
