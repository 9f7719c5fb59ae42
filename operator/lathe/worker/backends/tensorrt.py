"""TensorRT on an NVIDIA GPU behind the worker's Backend interface, written against TensorRT 10.13
(`TRT_API`, the version `tensorrt-stubs` describes; CI type-checks this module against those stubs with
strict mypy: tests/worker/test_tensorrt_types.py).

NEVER EXECUTED: this project's machines cannot install TensorRT (its PyPI packages download the real
wheels from NVIDIA's own index, unreachable here) and CI has no GPU. What runs in CI is everything in the
"pure" section below (profiles, parser-error reports, the inspector's JSON, the precision budget, the
timing-cache key) and the type check of every TensorRT and torch call. See docs/gpu.md.

build(onnx_path, outdir, options):
    ONNX --trt.OnnxParser (errors reported per node)--> strongly typed INetworkDefinition
         (NetworkDefinitionCreationFlag.STRONGLY_TYPED: precision is what the graph's Q/DQ nodes and casts
         say; no builder precision flags, which TensorRT 11 removed)
         + one optimization profile per profile of `derive_profiles` (spec.tensorrt.profiles, or derived
           from target.batchSizes and the model's dynamic dims)
         + workspace limit (MemoryPoolType.WORKSPACE) and builder_optimization_level from spec.tensorrt
         + the timing cache kept on disk, one file per TensorRT version and compute capability
         + ProfilingVerbosity.DETAILED
    --build_serialized_network--> outdir/model.plan, outdir/tensorrt.json (versions, GPU, profiles,
    build options), outdir/layers.json (the engine inspector's JSON) and outdir/precision.json (its audit)

load(): a Runner (numpy in, numpy out) on torch.cuda memory and stream: the profile whose range holds the
feeds' shapes is selected, input shapes set, `execute_async_v3` enqueued.
benchmark(): device time of `execute_async_v3` measured with torch.cuda.Event pairs at each batch size.
precision(): layer -> precision from layers.json (no GPU needed once built).

CUDA is driven through torch.cuda (torch is already a worker dependency): device memory, the stream, CUDA
events, the GPU's name and compute capability, and the CUDA version (torch.version.cuda).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInput, WorkerError
from .base import Artifact, Backend, Feeds, Runner, register_backend

if TYPE_CHECKING:  # only for the type check: neither is imported when this module loads
    import tensorrt as trt
    import torch

log = logging.getLogger("lathe.worker.tensorrt")

TRT_API = "10.13"  # the TensorRT Python API this module is written and type-checked against
ENGINE_FILE = "model.plan"
META_FILE = "tensorrt.json"
LAYERS_FILE = "layers.json"
AUDIT_FILE = "precision.json"

Shape = list[int]
Profile = dict[str, dict[str, Shape]]  # input -> {"min": [...], "opt": [...], "max": [...]}


# =========================================================================================== pure
# Everything in this section runs without TensorRT, torch.cuda or a GPU and is unit-tested in CI.

# ----------------------------------------------------------------------------------- profiles
def _is_dynamic(d: int | str | None) -> bool:
    return not (isinstance(d, int) and d > 0)


def derive_profiles(inputs: Mapping[str, Sequence[int | str | None]], batch_sizes: Sequence[int],
                    declared: Sequence[Mapping[str, Any]] = (),
                    hints: Mapping[str, Sequence[int]] | None = None) -> list[Profile]:
    """The optimization profiles of an engine.

    inputs: the model's inputs in order, dims int (fixed) or str/None/-1 (dynamic).
    declared: spec.tensorrt.profiles entries ({input, min, opt, max}). The k-th entry naming an input belongs
      to profile k, so [{a}, {b}, {a}, {b}] is two profiles; an input a profile does not name gets the derived
      range. Each entry must have the input's rank, keep its fixed dims and hold min <= opt <= max.
    Without declared entries: profile 0 spans batch 1..max(batch_sizes) with opt at the first batch size (the one
    that decides), and every other batch size gets its own exact profile (min = opt = max) so that each is
    benchmarked on kernels tuned for it. A dynamic dim other than the batch takes its value from `hints`
    (the validation data's shape for that input) and is fixed at it; without a hint it is an error naming it.
    Raises ValueError with the spec field path.
    """
    hints = dict(hints or {})
    bs = [int(b) for b in batch_sizes] or [1]
    if any(b < 1 for b in bs):
        raise ValueError(f"spec.target.batchSizes: batch sizes must be >= 1, got {bs}")

    def derived(name: str, lo: int, opt: int, hi: int) -> dict[str, Shape]:
        dims = list(inputs[name])
        mins, opts, maxs = [], [], []
        for axis, d in enumerate(dims):
            if not _is_dynamic(d):
                v = int(d)  # type: ignore[arg-type]  # _is_dynamic(d) is False: a positive int
                row = (v, v, v)
            elif axis == 0:
                row = (lo, opt, hi)
            else:
                h = list(hints.get(name, []))
                if len(h) != len(dims) or h[axis] < 1:
                    raise ValueError(
                        f"spec.tensorrt.profiles: input {name!r} dim {axis} ({d!r}) is dynamic and not the batch; "
                        f"declare a profile for it (no data shape to derive it from)")
                row = (h[axis], h[axis], h[axis])
            mins.append(row[0])
            opts.append(row[1])
            maxs.append(row[2])
        return {"min": mins, "opt": opts, "max": maxs}

    if not declared:
        first = bs[0]
        profiles: list[Profile] = [{n: derived(n, 1, first, max(bs)) for n in inputs}]
        batched = any(_is_dynamic(list(dims)[0]) for dims in inputs.values() if len(dims))
        if batched:
            for b in dict.fromkeys(bs[1:]):
                if b != first:
                    profiles.append({n: derived(n, b, b, b) for n in inputs})
        return profiles

    per_input: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for i, entry in enumerate(declared):
        name = str(entry.get("input", ""))
        where = f"spec.tensorrt.profiles[{i}]"
        if name not in inputs:
            raise ValueError(f"{where}.input: the model has no input {name!r} (inputs: {', '.join(inputs)})")
        dims = list(inputs[name])
        shapes = {k: [int(x) for x in entry.get(k) or []] for k in ("min", "opt", "max")}
        for k, v in shapes.items():
            if len(v) != len(dims):
                raise ValueError(f"{where}.{k}: {v} has rank {len(v)}, input {name!r} has rank {len(dims)} {dims}")
            for axis, (x, d) in enumerate(zip(v, dims, strict=True)):
                if x < 1:
                    raise ValueError(f"{where}.{k}[{axis}]: dims must be >= 1, got {x}")
                if not _is_dynamic(d) and x != d:
                    raise ValueError(f"{where}.{k}[{axis}]: {x} differs from the model's fixed dim {d}")
        for axis in range(len(dims)):
            if not shapes["min"][axis] <= shapes["opt"][axis] <= shapes["max"][axis]:
                raise ValueError(f"{where}: dim {axis} needs min <= opt <= max, got "
                                 f"{shapes['min'][axis]}, {shapes['opt'][axis]}, {shapes['max'][axis]}")
        per_input.setdefault(name, []).append((i, shapes))
    count = max(len(v) for v in per_input.values())
    out: list[Profile] = []
    for idx in range(count):
        prof: Profile = {}
        for name in inputs:
            entries = per_input.get(name, [])
            if idx < len(entries):
                prof[name] = {key: list(v) for key, v in entries[idx][1].items()}
            else:
                prof[name] = derived(name, 1, bs[0], max(bs))
        out.append(prof)
    return out


def select_profile(profiles: Sequence[Mapping[str, Mapping[str, Sequence[int]]]],
                   shapes: Mapping[str, Sequence[int]]) -> int:
    """The profile to run feeds of these shapes with: one whose opt is exactly them, else the first whose
    [min, max] holds them. Raises ValueError naming the shapes when none does."""
    def holds(p: Mapping[str, Mapping[str, Sequence[int]]], key: str | None) -> bool:
        for name, shape in shapes.items():
            r = p.get(name)
            if r is None or len(r["min"]) != len(shape):
                return False
            if key is not None and list(r[key]) != list(shape):
                return False
            if not all(lo <= s <= hi for lo, s, hi in zip(r["min"], shape, r["max"], strict=True)):
                return False
        return True

    for key in ("opt", None):
        for i, p in enumerate(profiles):
            if holds(p, key):
                return i
    raise ValueError(f"no optimization profile of the engine holds input shapes {dict(shapes)}")


# ------------------------------------------------------------------------------ parser errors
@dataclass
class ParserIssue:
    """One error of the ONNX parser (trt.ParserError), reduced to what a person needs."""

    code: str
    desc: str
    node: int = -1
    node_name: str = ""
    node_operator: str = ""
    local_functions: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = "model"
        if self.node >= 0 or self.node_name:
            where = f"node {self.node}" if self.node >= 0 else "node"
            if self.node_operator or self.node_name:
                where += f" ({' '.join(x for x in (self.node_operator, repr(self.node_name) if self.node_name else '') if x)})"
        if self.local_functions:
            where += f" in local function(s) {' > '.join(self.local_functions)}"
        return f"{where}: {self.code}: {self.desc}"


def parser_report(issues: Sequence[ParserIssue], limit: int = 8) -> str:
    """The parser's errors as one message, one per node (the first `limit`), and how many more."""
    if not issues:
        return "the ONNX parser failed without reporting an error"
    lines = [str(i) for i in issues[:limit]]
    more = f"; and {len(issues) - limit} more" if len(issues) > limit else ""
    return f"TensorRT's ONNX parser rejected the model ({len(issues)} error(s)): " + "; ".join(lines) + more


# ------------------------------------------------------------------------------- timing cache
def timing_cache_path(root: str | Path, trt_version: str, compute_capability: tuple[int, int]) -> Path:
    """One timing cache file per TensorRT version and compute capability (a cache is only valid for the
    same device, CUDA, TensorRT version and flags: TensorRT rejects a mismatched one)."""
    safe = re.sub(r"[^0-9A-Za-z.]+", "_", trt_version)
    major, minor = compute_capability
    return Path(root) / f"trt-{safe}-sm{major}{minor}.timing-cache"


# ---------------------------------------------------------------------------- inspector JSON
# precision order: lower is narrower. Types that are not arithmetic precisions (INT32, INT64, BOOL, UINT8:
# indices, masks, shapes) are not ranked and never decide a compute layer's precision.
RANK = {"FP4": 0, "INT4": 1, "FP8": 2, "INT8": 2, "FP16": 3, "BF16": 3, "FP32": 4, "FP64": 5}
# TensorRT 10 writes formats ("Row major linear FP32", "Channel major FP16 format where channel % 8 == 0",
# "Four wide channel vectorized row major Int8 format"), kgen/Myelin and TensorRT 11 write type names
# ("Float", "Half", "BFloat16", "Int8") and 11 appends "(kLINEAR)": match tokens, most specific first.
_DTYPE_PATTERNS = [
    ("BF16", r"bfloat16|\bbf16\b"), ("FP8", r"\bfp8\b|e4m3|e5m2|float8"), ("FP4", r"\bfp4\b|e2m1"),
    ("UINT8", r"\buint8\b"), ("INT4", r"\bint4\b"), ("INT8", r"\bint8\b"), ("INT64", r"\bint64\b"),
    ("INT32", r"\bint32\b"), ("FP16", r"\bfp16\b|\bhalf\b|float16"), ("FP64", r"\bdouble\b|\bfp64\b"),
    ("FP32", r"\bfp32\b|\bfloat\b|float32"), ("BOOL", r"\bbool\b"),
]
_COMPUTE = re.compile(r"conv|gemm|matmul|matrixmultiply|fullyconnected|attention|\bmha\b|einsum|deconv", re.I)
_PROFILE_SUFFIX = re.compile(r"\s*\[profile\s*(\d+)\]\s*$")


def datatype_of(desc: Any) -> str:
    """A tensor's precision from an inspector format/datatype string (loose: both versions' spellings)."""
    s = str(desc or "").lower().replace("_", " ")
    for name, pat in _DTYPE_PATTERNS:
        if re.search(pat, s):
            return name
    return "UNKNOWN"


def _tensor_dtype(t: Any) -> str:
    if isinstance(t, str):  # a bare string: a name (10.x Bindings) or a format
        return datatype_of(t)
    if not isinstance(t, Mapping):
        return "UNKNOWN"
    for key in ("Format/Datatype", "DataType", "Datatype", "Format", "Type"):
        if key in t:
            dt = datatype_of(t[key])
            if dt != "UNKNOWN":
                return dt
    for p in t.get("ProfileInfo") or []:  # 11.x I/O tensors: the format is per profile
        if isinstance(p, Mapping) and "Format" in p:
            return datatype_of(p["Format"])
    return "UNKNOWN"


@dataclass
class EngineLayer:
    name: str
    type: str
    precision: str            # the narrowest ranked precision among the inputs (and weights), else outputs
    inputs: list[str]         # each input's precision
    outputs: list[str]
    compute: bool
    profile: int = 0
    tactic: str = ""


@dataclass
class EngineInfo:
    layers: list[EngineLayer]  # profile 0's layers (later profiles repeat them with a "[profile N]" suffix)
    io_tensors: list[dict[str, Any]]  # name, mode, dtype, shapes per profile (11.x) or just names (10.x)
    profiles: int
    detailed: bool             # False: the engine was built without ProfilingVerbosity.DETAILED
    shape: str                 # "10" (Bindings, no I/O Tensors) or "11" (I/O Tensors), "unknown" otherwise


def _layer_precision(ins: list[str], outs: list[str], weights: str) -> str:
    ranked = [p for p in [*ins, weights] if p in RANK]
    if ranked:
        return min(ranked, key=lambda p: RANK[p])
    ranked = [p for p in outs if p in RANK]
    if ranked:
        return min(ranked, key=lambda p: RANK[p])
    known = [p for p in [*ins, *outs] if p != "UNKNOWN"]
    return known[0] if known else "UNKNOWN"


def parse_engine_json(doc: str | Mapping[str, Any]) -> EngineInfo:
    """The engine inspector's `get_engine_information(LayerInformationFormat.JSON)`, in the shape of TensorRT
    10 (`Layers` [{Name, LayerType, Inputs/Outputs [{Name, Dimensions, Format/Datatype}], TacticName}],
    `Bindings` [names]) or 11 (`I/O Tensors` [{Name, IOMode, DataType, Dimensions, ProfileInfo [{MinShape,
    OptShape, MaxShape, Format}]}]). Unknown keys are ignored and missing ones tolerated."""
    data: Any = json.loads(doc) if isinstance(doc, str) else doc
    if isinstance(data, list):  # a bare list of layers
        data = {"Layers": data}
    if not isinstance(data, Mapping):
        raise ValueError(f"engine information is not a JSON object but {type(data).__name__}")
    raw_layers = data.get("Layers") or []
    detailed = bool(raw_layers) and all(isinstance(x, Mapping) for x in raw_layers)
    layers: list[EngineLayer] = []
    profiles = 1
    for raw in raw_layers:
        if not isinstance(raw, Mapping):  # LAYER_NAMES_ONLY: a list of names
            name = str(raw)
            m = _PROFILE_SUFFIX.search(name)
            profiles = max(profiles, int(m.group(1)) + 1) if m else profiles
            if not m:
                layers.append(EngineLayer(name, "", "UNKNOWN", [], [], False))
            continue
        name = str(raw.get("Name") or raw.get("LayerName") or "")
        m = _PROFILE_SUFFIX.search(name)
        if m:
            profiles = max(profiles, int(m.group(1)) + 1)
            continue  # the same layers again for a later profile
        ltype = str(raw.get("LayerType") or raw.get("Type") or "")
        ptype = str(raw.get("ParameterType") or "")
        if ltype.lower() in ("signal", "wait"):
            continue
        ins = [_tensor_dtype(t) for t in raw.get("Inputs") or []]
        outs = [_tensor_dtype(t) for t in raw.get("Outputs") or []]
        w = raw.get("Weights")
        weights = datatype_of(w.get("Type")) if isinstance(w, Mapping) else "UNKNOWN"
        kind = f"{ptype} {ltype} {raw.get('Metadata', '')}" if ptype else f"{ltype} {raw.get('Metadata', '')}"
        compute = bool(_COMPUTE.search(f"{ptype} {ltype}")) or (not ptype and not ltype and bool(_COMPUTE.search(kind)))
        layers.append(EngineLayer(name=name, type=ptype or ltype, precision=_layer_precision(ins, outs, weights),
                                  inputs=ins, outputs=outs, compute=compute, tactic=str(raw.get("TacticName") or "")))
    io: list[dict[str, Any]] = []
    shape = "unknown"
    if isinstance(data.get("I/O Tensors"), list):
        shape = "11"
        for t in data["I/O Tensors"]:
            if not isinstance(t, Mapping):
                continue
            prof = [{"min": p.get("MinShape"), "opt": p.get("OptShape"), "max": p.get("MaxShape")}
                    for p in t.get("ProfileInfo") or [] if isinstance(p, Mapping)]
            profiles = max(profiles, len(prof))
            io.append({"name": str(t.get("Name", "")), "mode": str(t.get("IOMode", "")).lower(),
                       "dtype": _tensor_dtype(t), "dims": t.get("Dimensions"), "profiles": prof})
    elif isinstance(data.get("Bindings"), list):
        shape = "10"
        for b in data["Bindings"]:
            n = str(b)
            m = _PROFILE_SUFFIX.search(n)
            if m:
                profiles = max(profiles, int(m.group(1)) + 1)
                continue
            io.append({"name": n})
    return EngineInfo(layers=layers, io_tensors=io, profiles=profiles, detailed=detailed, shape=shape)


def precision_audit(info: EngineInfo, requested: str) -> dict[str, Any]:
    """Layers counted by precision; the compute layers (convolutions, matrix multiplies, attention) running in
    a higher precision than the candidate asked for; the share that reduced."""
    requested = requested.upper()
    compute = [layer for layer in info.layers if layer.compute]
    want = RANK.get(requested)
    higher = [layer.name for layer in compute if want is not None and RANK.get(layer.precision, -1) > want]
    reduced = [layer for layer in compute if want is not None and 0 <= RANK.get(layer.precision, 99) <= want]
    return {
        "requested": requested,
        "inspector_shape": info.shape,
        "detailed": info.detailed,
        "profiles": info.profiles,
        "layers": {layer.name: layer.precision for layer in info.layers},
        "by_precision": dict(Counter(layer.precision for layer in info.layers)),
        "compute_by_precision": dict(Counter(layer.precision for layer in compute)),
        "compute_layers": len(compute),
        "higher_than_requested": higher,
        "reduced_share": round(len(reduced) / len(compute), 4) if compute else None,
    }


def reduced_precision_failure(audit: Mapping[str, Any], min_share: float = 0.5) -> str | None:
    """Why a reduced-precision candidate (anything but FP32) must fail: its engine mostly did not reduce (fewer
    than `min_share` of the compute layers at or below the requested precision), or the JSON does not say what
    the layers run in. None when the candidate is FP32 or the engine did reduce."""
    requested = str(audit.get("requested", "FP32")).upper()
    if RANK.get(requested, RANK["FP32"]) >= RANK["FP32"]:
        return None
    if not audit.get("detailed"):
        return (f"precision audit: the engine information has no per-layer detail (built without "
                f"ProfilingVerbosity.DETAILED?): cannot show that the {requested} candidate runs in {requested}")
    n = int(audit.get("compute_layers") or 0)
    if n == 0:
        return f"precision audit: no compute layer found in the engine information of a {requested} candidate"
    share = float(audit.get("reduced_share") or 0.0)
    if share >= min_share:
        return None
    higher = list(audit.get("higher_than_requested") or [])
    by = ", ".join(f"{k} {v}" for k, v in sorted((audit.get("compute_by_precision") or {}).items()))
    return (f"precision audit: the engine mostly did not reduce: {round(share * n)} of {n} compute layer(s) at "
            f"{requested} or below ({share:.0%} < {min_share:.0%}; {by}); higher than {requested}: "
            + ", ".join(higher[:8]) + (f" and {len(higher) - 8} more" if len(higher) > 8 else ""))


def requested_precision(op_types: Mapping[str, int], quant_types: Sequence[str] = (),
                        cast_types: Sequence[str] = ()) -> str:
    """What a strongly typed graph asks for: its Q/DQ (the zero points' / outputs' element types), else its casts
    to FP16/BF16, else FP32. quant_types/cast_types are ONNX TensorProto type names (INT8, FLOAT8E4M3FN,
    INT4, FLOAT16, BFLOAT16...)."""
    if op_types.get("QuantizeLinear") or op_types.get("DequantizeLinear"):
        names = {t.upper() for t in quant_types}
        if any(t.startswith("FLOAT4") for t in names):
            return "FP4"
        if any(t.startswith("FLOAT8") for t in names):
            return "FP8"
        if names and names <= {"INT4", "UINT4"}:
            return "INT4"
        return "INT8"
    casts = {t.upper() for t in cast_types}
    if "FLOAT16" in casts:
        return "FP16"
    if "BFLOAT16" in casts:
        return "BF16"
    return "FP32"


def graph_precision(onnx_path: str | Path) -> str:
    """`requested_precision` of an ONNX file (reads the graph with onnx, no weights loaded)."""
    import onnx  # noqa: PLC0415

    m = onnx.load(str(onnx_path), load_external_data=False)
    g = m.graph
    types: Counter[str] = Counter(n.op_type for n in g.node)
    elem: dict[str, int] = {i.name: i.data_type for i in g.initializer}
    for vi in [*g.value_info, *g.input, *g.output]:
        elem.setdefault(vi.name, vi.type.tensor_type.elem_type)
    qt: list[str] = []
    casts: list[str] = []
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = n.input[2] if len(n.input) > 2 else ""
            tname = (n.output[0] if n.op_type == "QuantizeLinear" else n.input[0])
            t = elem.get(zp) or elem.get(tname)
            if t:
                qt.append(onnx.TensorProto.DataType.Name(t))
        elif n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to":
                    casts.append(onnx.TensorProto.DataType.Name(a.i))
    return requested_precision(dict(types), qt, casts)


def percentiles_ms(samples: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    return {"p50_ms": round(float(np.percentile(a, 50)), 5), "p90_ms": round(float(np.percentile(a, 90)), 5),
            "p99_ms": round(float(np.percentile(a, 99)), 5), "mean_ms": round(float(a.mean()), 5)}


def _write_atomic(path: Path, data: bytes) -> None:
    """Write beside and rename in: workers sharing the artifacts volume never read half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ===================================================================================== TensorRT
# Never executed on this project's machines (no TensorRT, no GPU). Type-checked against tensorrt-stubs 10.13.

def _trt_problem() -> str | None:
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as e:
        return f"tensorrt is not installed in this worker ({e}); the GPU worker image provides it"
    if not hasattr(trt, "Builder"):  # tensorrt-stubs alone makes `tensorrt` an empty namespace package
        where = list(getattr(trt, "__path__", []))
        return (f"tensorrt is not installed in this worker: `import tensorrt` found only a package without the "
                f"bindings (type stubs? {where})")
    return None


def _trt_dtypes() -> dict[trt.DataType, tuple[str, torch.dtype]]:
    import tensorrt as trt  # noqa: PLC0415
    import torch  # noqa: PLC0415

    return {trt.DataType.FLOAT: ("float32", torch.float32), trt.DataType.HALF: ("float16", torch.float16),
            trt.DataType.BF16: ("float32", torch.bfloat16), trt.DataType.INT8: ("int8", torch.int8),
            trt.DataType.UINT8: ("uint8", torch.uint8), trt.DataType.INT32: ("int32", torch.int32),
            trt.DataType.INT64: ("int64", torch.int64), trt.DataType.BOOL: ("bool", torch.bool),
            trt.DataType.FP8: ("float32", torch.float8_e4m3fn)}


def device_info() -> dict[str, Any]:
    """TensorRT and CUDA versions, GPU name and compute capability: recorded with every engine."""
    import tensorrt as trt  # noqa: PLC0415
    import torch  # noqa: PLC0415

    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    props = torch.cuda.get_device_properties(dev)
    return {"tensorrt": trt.__version__, "tensorrt_api": TRT_API, "cuda": torch.version.cuda,
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(dev),
            "compute_capability": f"{major}.{minor}", "sm": f"sm{major}{minor}",
            "gpu_memory_mib": int(props.total_memory // (1 << 20))}


def _dims(d: trt.Dims) -> list[int]:
    return [int(d[i]) for i in range(len(d))]


def _bind_inputs(engine: trt.ICudaEngine, context: trt.IExecutionContext, in_names: list[str], feeds: Feeds,
                 dtypes: dict[trt.DataType, tuple[str, torch.dtype]]) -> list[torch.Tensor]:
    """Copy each input to the GPU in the engine's type (BF16/FP8 cast on the device) and bind it; the
    tensors returned must outlive the execution."""
    import torch  # noqa: PLC0415

    keep: list[torch.Tensor] = []
    for n in in_names:
        np_dtype, tdtype = dtypes[engine.get_tensor_dtype(n)]
        t = torch.from_numpy(np.ascontiguousarray(feeds[n], dtype=np_dtype)).to("cuda").to(tdtype)
        context.set_input_shape(n, list(t.shape))
        context.set_tensor_address(n, t.data_ptr())
        keep.append(t)
    return keep


def parse_onnx(network: trt.INetworkDefinition, logger: trt.ILogger, onnx_path: Path) -> None:
    """Parse into `network`; on failure raise InvalidInput listing the parser's errors node by node."""
    import tensorrt as trt  # noqa: PLC0415

    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return
    issues: list[ParserIssue] = []
    for i in range(parser.num_errors):
        err: trt.ParserError = parser.get_error(i)
        issues.append(ParserIssue(code=str(err.code()).rsplit(".", 1)[-1], desc=err.desc(), node=err.node(),
                                  node_name=err.node_name(), node_operator=err.node_operator(),
                                  local_functions=list(err.local_function_stack())))
    raise InvalidInput("build", parser_report(issues))


def _profile_options(engine: trt.ICudaEngine) -> list[Profile]:
    import tensorrt as trt  # noqa: PLC0415

    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    out: list[Profile] = []
    for p in range(engine.num_optimization_profiles):
        prof: Profile = {}
        for n in inputs:
            lo, opt, hi = engine.get_tensor_profile_shape(n, p)
            prof[n] = {"min": _dims(lo), "opt": _dims(opt), "max": _dims(hi)}
        out.append(prof)
    return out


@register_backend
class TensorRTBackend(Backend):
    name = "tensorrt"

    @classmethod
    def available(cls) -> str | None:
        problem = _trt_problem()
        if problem:
            return problem
        try:
            import torch  # noqa: PLC0415
        except ImportError as e:
            return f"torch is not installed in this worker ({e}): the TensorRT backend drives CUDA through torch.cuda"
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible to this worker (torch.cuda.is_available() is False)"
        return None

    # ---------------------------------------------------------------- options
    def build_options(self, ctx: Any, state: Any) -> dict[str, Any]:
        """What build() needs from the spec and the run: the model's inputs, target.batchSizes, the validation
        data's shapes (hints for dynamic dims), spec.tensorrt and where the timing cache lives."""
        spec = getattr(ctx, "spec", None)
        model = getattr(ctx, "model", None)
        inputs = {i.name: list(i.shape) for i in getattr(model, "inputs", None) or []}
        hints: dict[str, list[int]] = {}
        val = getattr(ctx, "validation", None)
        for name, arr in (getattr(val, "feeds", None) or {}).items():
            hints[name] = [1, *[int(x) for x in np.shape(arr)[1:]]]
        trt_spec = getattr(spec, "tensorrt", None)
        target = getattr(spec, "target", None)
        workdir = Path(getattr(ctx, "workdir", ".") or ".").resolve()  # <run>/candidates/<name>/work
        run_dir = workdir.parents[2] if len(workdir.parents) > 2 else workdir
        cache_root = getattr(trt_spec, "timing_cache", None) or os.environ.get("LATHE_TRT_TIMING_CACHE") \
            or str(run_dir / "timing-cache")
        return {"inputs": inputs, "hints": hints,
                "batch_sizes": list(getattr(target, "batch_sizes", None) or [1]),
                "profiles": [p.model_dump() if hasattr(p, "model_dump") else dict(p)
                             for p in getattr(trt_spec, "profiles", None) or []],
                "workspace_mib": int(getattr(trt_spec, "workspace_mib", 4096) or 4096),
                "optimization_level": int(getattr(trt_spec, "optimization_level", 3)),
                "timing_cache_dir": cache_root}

    # ---------------------------------------------------------------- build
    def build(self, onnx_path: Path, outdir: Path, options: dict[str, Any]) -> Artifact:
        problem = self.available()
        if problem:
            raise WorkerError("build", problem)
        import tensorrt as trt  # noqa: PLC0415
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        opts = dict(options or {})
        t0 = time.perf_counter()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parse_onnx(network, logger, Path(onnx_path))

        net_inputs = {network.get_input(i).name: _dims(network.get_input(i).shape) for i in range(network.num_inputs)}
        declared_inputs = {k: v for k, v in (opts.get("inputs") or {}).items() if k in net_inputs}
        inputs: dict[str, list[int | str | None]] = {
            n: list(declared_inputs.get(n) or [d if d > 0 else None for d in dims]) for n, dims in net_inputs.items()}
        try:
            profiles = derive_profiles(inputs, opts.get("batch_sizes") or [1], opts.get("profiles") or [],
                                       opts.get("hints"))
        except ValueError as e:
            raise InvalidInput("build", str(e)) from e

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.get("workspace_mib", 4096)) << 20)
        config.builder_optimization_level = int(opts.get("optimization_level", 3))
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        for prof in profiles:
            p = builder.create_optimization_profile()
            for name, r in prof.items():
                p.set_shape(name, trt.Dims(r["min"]), trt.Dims(r["opt"]), trt.Dims(r["max"]))
            if config.add_optimization_profile(p) < 0:
                raise InvalidInput("build", f"TensorRT refused optimization profile {prof}")

        dev = device_info()
        major, minor = (int(x) for x in str(dev["compute_capability"]).split("."))
        cache_file = timing_cache_path(opts.get("timing_cache_dir") or outdir, trt.__version__, (major, minor))
        old = cache_file.read_bytes() if cache_file.exists() else b""
        cache = config.create_timing_cache(old)
        cache_loaded = bool(old) and config.set_timing_cache(cache, False)
        if not cache_loaded:  # absent or refused (another device, CUDA or TensorRT): start a fresh one
            config.set_timing_cache(config.create_timing_cache(b""), False)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise WorkerError("build", "TensorRT could not build the engine (see the worker's log for TensorRT's "
                                       "messages)")
        engine_bytes = bytes(memoryview(serialized))
        final = config.get_timing_cache()
        now = cache_file.read_bytes() if cache_file.exists() else b""
        if now and now != old:  # another build (a parallel worker on the same volume) wrote it meanwhile: keep both
            final.combine(config.create_timing_cache(now), False)
        _write_atomic(cache_file, bytes(memoryview(final.serialize())))
        plan = outdir / ENGINE_FILE
        plan.write_bytes(engine_bytes)
        build_s = time.perf_counter() - t0

        requested = str(opts.get("requested_precision") or graph_precision(onnx_path)).upper()
        engine_json = self._inspect_bytes(engine_bytes, profiles[0])
        (outdir / LAYERS_FILE).write_text(engine_json)
        audit = precision_audit(parse_engine_json(engine_json), requested)
        audit["failure"] = reduced_precision_failure(audit)
        (outdir / AUDIT_FILE).write_text(json.dumps(audit, indent=1))
        meta: dict[str, Any] = {**dev, "source": str(onnx_path), "strongly_typed": True, "profiles": profiles,
                                "workspace_mib": int(opts.get("workspace_mib", 4096)),
                                "optimization_level": config.builder_optimization_level,
                                "profiling_verbosity": "DETAILED", "timing_cache": str(cache_file),
                                "timing_cache_reused": cache_loaded, "build_seconds": round(build_s, 3),
                                "requested_precision": requested, "precision_failure": audit["failure"]}
        (outdir / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return Artifact(runtime=self.name, files=[plan], meta=meta)

    # ---------------------------------------------------------------- engine, run
    @staticmethod
    def _meta(artifact: Artifact) -> dict[str, Any]:
        if artifact.meta:
            return artifact.meta
        try:
            meta: dict[str, Any] = json.loads((Path(artifact.path).parent / META_FILE).read_text())
            return meta
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _engine(data: bytes) -> trt.ICudaEngine:
        import tensorrt as trt  # noqa: PLC0415

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise WorkerError("load", "TensorRT could not deserialize the engine (another TensorRT version or GPU "
                                      "architecture than the one it was built for?)")
        return engine

    def _inspect_bytes(self, data: bytes, profile0: Profile) -> str:
        """The inspector's JSON with a context whose shapes are profile 0's opt (dynamic dims read -1 otherwise)."""
        import tensorrt as trt  # noqa: PLC0415

        engine = self._engine(data)
        context = engine.create_execution_context()
        for name, r in profile0.items():
            context.set_input_shape(name, r["opt"])
        inspector = engine.create_engine_inspector()
        inspector.execution_context = context
        return inspector.get_engine_information(trt.LayerInformationFormat.JSON)

    def _session(self, artifact: Artifact) -> tuple[trt.ICudaEngine, trt.IExecutionContext, torch.cuda.Stream,
                                                     list[str], list[str]]:
        """The engine, an execution context, a stream, and its input and output tensor names."""
        import tensorrt as trt  # noqa: PLC0415
        import torch  # noqa: PLC0415

        engine = self._engine(Path(artifact.path).read_bytes())
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        in_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        out_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        return engine, engine.create_execution_context(), torch.cuda.Stream(), in_names, out_names

    def load(self, artifact: Artifact, threads: int) -> Runner:
        import torch  # noqa: PLC0415

        engine, context, stream, in_names, out_names = self._session(artifact)
        dtypes = _trt_dtypes()
        profiles = _profile_options(engine)
        current = [-1]

        def run(feeds: Feeds) -> list[np.ndarray[Any, Any]]:
            shapes = {n: list(feeds[n].shape) for n in in_names}
            p = select_profile(profiles, shapes)
            if p != current[0]:
                context.set_optimization_profile_async(p, stream.cuda_stream)
                current[0] = p
            _inputs = _bind_inputs(engine, context, in_names, feeds, dtypes)  # alive until the run ends
            outs: list[torch.Tensor] = []
            for n in out_names:
                _, tdtype = dtypes[engine.get_tensor_dtype(n)]
                o = torch.empty(_dims(context.get_tensor_shape(n)), dtype=tdtype, device="cuda")
                context.set_tensor_address(n, o.data_ptr())
                outs.append(o)
            if not context.execute_async_v3(stream.cuda_stream):
                raise WorkerError("validate", f"TensorRT execute_async_v3 failed for input shapes {shapes}")
            stream.synchronize()
            return [o.float().cpu().numpy() if o.dtype in (torch.bfloat16, torch.float8_e4m3fn) else o.cpu().numpy()
                    for o in outs]

        setattr(run, "engine", engine)  # noqa: B010  (kept alive with the runner)
        return run

    def event_timer(self, artifact: Artifact, warmup: int = 20) -> Callable[[Feeds, int], list[float]]:
        """A timer for evaluate.benchmark: `timer(feeds, iters)` is the device time (ms) of each of `iters`
        `execute_async_v3` calls on these feeds, between two torch.cuda.Event records on the engine's stream
        (inputs already on the GPU, outputs left there: host copies are not in the figure). One session serves
        every call, so interleaved rounds do not pay for deserializing the engine again."""
        import torch  # noqa: PLC0415

        engine, context, stream, in_names, out_names = self._session(artifact)
        dtypes = _trt_dtypes()
        profiles = _profile_options(engine)

        def timed(feeds: Feeds, iters: int) -> list[float]:
            shapes = {n: list(feeds[n].shape) for n in in_names}
            context.set_optimization_profile_async(select_profile(profiles, shapes), stream.cuda_stream)
            keep = _bind_inputs(engine, context, in_names, feeds, dtypes)
            for n in out_names:
                o = torch.empty(_dims(context.get_tensor_shape(n)), dtype=dtypes[engine.get_tensor_dtype(n)][1],
                                device="cuda")
                context.set_tensor_address(n, o.data_ptr())
                keep.append(o)
            for _ in range(warmup):
                context.execute_async_v3(stream.cuda_stream)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(iters)]
            with torch.cuda.stream(stream):
                for start, end in events:
                    start.record(stream)
                    context.execute_async_v3(stream.cuda_stream)
                    end.record(stream)
            stream.synchronize()
            return [float(start.elapsed_time(end)) for start, end in events]

        setattr(timed, "engine", engine)  # noqa: B010  (kept alive with the timer)
        return timed

    def benchmark(self, artifact: Artifact, feeds_by_batch: Mapping[int, Feeds], iterations: int = 200,
                  warmup: int = 20) -> dict[int, dict[str, Any]]:
        """`event_timer`'s device times at each batch size, summarised: p50/p90/p99/mean and throughput."""
        engine = self._engine(Path(artifact.path).read_bytes())
        profiles = _profile_options(engine)
        timed = self.event_timer(artifact, warmup)
        results: dict[int, dict[str, Any]] = {}
        for bs, feeds in feeds_by_batch.items():
            shapes = {n: list(a.shape) for n, a in feeds.items()}
            times = timed(feeds, iterations)
            results[int(bs)] = {"profile": select_profile(profiles, shapes), "iterations": iterations,
                                "shapes": shapes, **percentiles_ms(times),
                                "throughput_per_s": round(bs * 1000.0 / max(float(np.median(times)), 1e-9), 2)}
        return results

    # ---------------------------------------------------------------- precision audit
    def audit(self, artifact: Artifact, requested: str | None = None) -> dict[str, Any]:
        """The per-layer audit of the built engine from layers.json (written at build time: no GPU needed)."""
        folder = Path(artifact.path).parent
        info = parse_engine_json((folder / LAYERS_FILE).read_text())
        req = requested or str(self._meta(artifact).get("requested_precision") or "FP32")
        audit = precision_audit(info, req)
        audit["failure"] = reduced_precision_failure(audit)
        return audit

    def precision(self, artifact: Artifact) -> dict[str, str]:
        """Engine layer name -> the precision it runs in (from the engine inspector)."""
        layers: dict[str, str] = self.audit(artifact)["layers"]
        return layers


__all__ = ["TensorRTBackend", "TRT_API", "derive_profiles", "select_profile", "parse_engine_json", "precision_audit",
           "reduced_precision_failure", "requested_precision", "graph_precision", "timing_cache_path",
           "ParserIssue", "parser_report", "datatype_of", "device_info"]
