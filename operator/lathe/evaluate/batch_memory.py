"""Whether a batch's inputs alone fit the worker's memory limit (pure).

The operator checks it before any Job when spec.model.inputs gives every dimension but the batch
(`sample_bytes`); the worker checks it again with the real data's arrays once they are read (dynamic
dimensions such as a sequence length are then known), before anything is benchmarked. Only what is
certain is refused: the inputs of one batch taking more than the whole limit. A batch that fits its inputs
can still be killed for the activations it needs; the operator then says so (controller/killed.py)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

DTYPE_BYTES = {"float32": 4, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 1e-3}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([-+]?[0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")


def parse_quantity(text: str | int | float | None) -> int | None:
    """A Kubernetes quantity ("1500Mi", "2G", "1e9", "512974848") in bytes; None when it is not one."""
    if text is None:
        return None
    m = _QUANTITY.match(str(text).strip())
    if not m:
        return None
    number, exponent, unit = m.groups()
    value = float(number) * (10 ** int(exponent) if exponent else 1) * _UNITS[unit or ""]
    return math.ceil(value)


def sample_bytes(inputs: Iterable) -> int | None:
    """Bytes one sample of every input takes, from declared shapes ([batch, d1, d2, ...]: every d an
    int); None when a dimension other than the batch is dynamic or no shape is given."""
    total = 0
    for i in inputs:
        dims = list(getattr(i, "shape", None) or [])
        if not dims or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            return None
        total += math.prod(dims[1:]) * DTYPE_BYTES.get(str(getattr(i, "dtype", "float32")), 4)
    return total or None


def human(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def oversized(batch_sizes: Sequence[int], per_sample: int, limit: str, where: str) -> str | None:
    """The message refusing the first batch size whose inputs alone exceed `limit` (a quantity), else
    None. `where` says where the per-sample size comes from."""
    limit_bytes = parse_quantity(limit)
    if not limit_bytes or per_sample <= 0:
        return None
    for bs in batch_sizes:
        need = bs * per_sample
        if need > limit_bytes:
            fits = limit_bytes // per_sample
            return (f"batch size {bs} needs {human(need)} for its inputs alone ({per_sample} bytes a sample, "
                    f"{where}), more than the worker's memory limit {limit} ({human(limit_bytes)}): inputs alone "
                    f"fit below {fits} samples a batch, and running the model needs more; lower "
                    "spec.target.batchSizes or raise spec.target.resources.limits.memory")
    return None
