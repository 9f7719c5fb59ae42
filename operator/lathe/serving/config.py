"""Triton `config.pbtxt` generation: model signature read from the model file, one flavour per backend,
and a check of every generated config against Triton's real schema (`ModelConfig` protobuf).

Flavours (registry `FLAVOURS`, keyed by the spec's `publish.flavour` names):
- `onnxruntime` → `platform: "onnxruntime_onnx"`, `<v>/model.onnx` (CPU production Triton);
- `tensorrt`    → `platform: "tensorrt_plan"`, `<v>/model.plan`, or one engine per compute capability
                  with `cc_model_filenames` (config generation only on this machine);
- `python`      → `backend: "python"`, `<v>/model.onnx` + a generated `<v>/model.py` that runs it with
                  ONNX Runtime inside Triton (what the pytriton wheel can serve, and what tests use);
- `openvino`    → hook: register a `Flavour` subclass with `register_flavour()` (model.xml + model.bin).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format


class ConfigError(ValueError):
    """A model file or a generated config that Triton would not accept."""


# ONNX TensorProto.DataType -> Triton data type
_ONNX_TO_TRITON = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
    7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
    13: "TYPE_UINT64", 16: "TYPE_BF16",
}
TRITON_TO_NUMPY = {
    "TYPE_FP32": "float32", "TYPE_UINT8": "uint8", "TYPE_INT8": "int8", "TYPE_UINT16": "uint16",
    "TYPE_INT16": "int16", "TYPE_INT32": "int32", "TYPE_INT64": "int64", "TYPE_STRING": "object",
    "TYPE_BOOL": "bool", "TYPE_FP16": "float16", "TYPE_FP64": "float64", "TYPE_UINT32": "uint32",
    "TYPE_UINT64": "uint64",
}


@dataclass(frozen=True)
class TensorSig:
    name: str
    data_type: str          # Triton TYPE_*
    dims: tuple[int, ...]   # full dims including the batch dim; -1 where dynamic


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]

    def batchable(self) -> bool:
        """True when every tensor has a dynamic leading dim (the batch dim Triton can own)."""
        return all(t.dims and t.dims[0] == -1 for t in (*self.inputs, *self.outputs))


def onnx_signature(path: str | Path) -> Signature:
    """Inputs (initializers excluded) and outputs of an ONNX model; dim_param/unknown dims become -1."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}

    def sig(vi) -> TensorSig:
        tt = vi.type.tensor_type
        if tt.elem_type not in _ONNX_TO_TRITON:
            raise ConfigError(f"{path}: tensor {vi.name!r} has an ONNX type ({tt.elem_type}) Triton cannot serve")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim)
        return TensorSig(vi.name, _ONNX_TO_TRITON[tt.elem_type], dims)

    ins = tuple(sig(v) for v in m.graph.input if v.name not in inits)
    outs = tuple(sig(v) for v in m.graph.output)
    if not ins or not outs:
        raise ConfigError(f"{path}: model has no inputs or no outputs")
    return Signature(ins, outs)


@dataclass
class ConfigOptions:
    max_batch_size: int = 8
    dynamic_batching: bool = True
    instances: int = 1
    versions: Sequence[int] = ()            # version_policy specific; empty = latest 1
    parameters: Mapping[str, str] = field(default_factory=dict)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_block(key: str, tensors: Sequence[TensorSig], drop_batch: bool) -> str:
    items = []
    for t in tensors:
        dims = list(t.dims[1:] if drop_batch else t.dims)
        if not dims:  # Triton needs at least one dim; a [batch] tensor becomes [1] with reshape
            items.append(f"  {{\n    name: {_q(t.name)}\n    data_type: {t.data_type}\n    dims: [ 1 ]\n"
                         f"    reshape: {{ shape: [ ] }}\n  }}")
            continue
        items.append(f"  {{\n    name: {_q(t.name)}\n    data_type: {t.data_type}\n"
                     f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}")
    return f"{key} [\n" + ",\n".join(items) + "\n]\n"


def effective_batch(sig: Signature, max_batch_size: int) -> int:
    """max_batch_size if the model has a dynamic leading dim everywhere, else 0 (Triton then sees full shapes)."""
    return max_batch_size if max_batch_size > 0 and sig.batchable() else 0


def render_config(name: str, sig: Signature, opts: ConfigOptions, *, platform: str | None = None,
                  backend: str | None = None, kind: str = "KIND_CPU", extra: str = "") -> str:
    if bool(platform) == bool(backend):
        raise ConfigError("exactly one of platform or backend")
    mbs = effective_batch(sig, opts.max_batch_size)
    out = [f"name: {_q(name)}", f"platform: {_q(platform)}" if platform else f"backend: {_q(backend)}",
           f"max_batch_size: {mbs}"]
    text = "\n".join(out) + "\n"
    text += _tensor_block("input", sig.inputs, mbs > 0)
    text += _tensor_block("output", sig.outputs, mbs > 0)
    if opts.versions:
        vs = ", ".join(str(v) for v in sorted(set(opts.versions)))
        text += f"version_policy: {{ specific: {{ versions: [ {vs} ] }} }}\n"
    else:
        text += "version_policy: { latest: { num_versions: 1 } }\n"
    if mbs > 0 and opts.dynamic_batching:
        text += "dynamic_batching { }\n"
    text += f"instance_group [\n  {{\n    count: {opts.instances}\n    kind: {kind}\n  }}\n]\n"
    for k, v in sorted(opts.parameters.items()):
        text += f"parameters {{\n  key: {_q(k)}\n  value: {{ string_value: {_q(str(v))} }}\n}}\n"
    return text + extra


def parse_config(text: str):
    """Parse config.pbtxt text into Triton's real `ModelConfig` protobuf (raises ConfigError)."""
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise ConfigError(f"config.pbtxt does not match Triton's ModelConfig schema: {e}") from e
    return cfg


def check_config(text: str, *, name: str | None = None):
    """Schema check plus the rules Triton enforces at load time that the schema alone does not."""
    cfg = parse_config(text)
    if name is not None and cfg.name != name:
        raise ConfigError(f"config name {cfg.name!r} != model directory {name!r}")
    if not cfg.platform and not cfg.backend:
        raise ConfigError("config needs a platform or a backend")
    if not cfg.input or not cfg.output:
        raise ConfigError("config needs inputs and outputs")
    for t in (*cfg.input, *cfg.output):
        if not t.dims:
            raise ConfigError(f"tensor {t.name!r} has no dims")
        if any(d == 0 or d < -1 for d in t.dims):
            raise ConfigError(f"tensor {t.name!r} has invalid dims {list(t.dims)}")
    if cfg.HasField("dynamic_batching") and cfg.max_batch_size == 0:
        raise ConfigError("dynamic_batching needs max_batch_size > 0")
    return cfg


def set_version_policy(text: str, versions: Sequence[int]) -> str:
    """Same config with `version_policy: specific { versions }` (round-tripped through the schema)."""
    cfg = parse_config(text)
    cfg.version_policy.Clear()
    cfg.version_policy.specific.versions.extend(sorted(set(int(v) for v in versions)))
    return text_format.MessageToString(cfg)


def config_versions(text: str) -> list[int] | None:
    """Versions of a `specific` policy; None for latest/all policies."""
    cfg = parse_config(text)
    if cfg.version_policy.WhichOneof("policy_choice") == "specific":
        return sorted(cfg.version_policy.specific.versions)
    return None


def io_of(text: str) -> tuple:
    """The parts of a config that all versions of one model must share: platform/backend, batch, IO."""
    cfg = parse_config(text)
    def t(x):
        return tuple((i.name, i.data_type, tuple(i.dims)) for i in x)
    return (cfg.platform, cfg.backend, cfg.max_batch_size, t(cfg.input), t(cfg.output))


def widen(sig: Signature, served: str, max_batch_size: int) -> Signature:
    """`sig` with every dim the served config leaves dynamic made dynamic too. One exporter infers
    an output's width (384) where another leaves it open (-1): the same model to Triton, and the
    config all versions share must admit both."""
    cfg = parse_config(served)
    old = {t.name: tuple(t.dims) for t in (*cfg.input, *cfg.output)}
    batched = effective_batch(sig, max_batch_size) > 0

    def w(t: TensorSig) -> TensorSig:
        head, body = (t.dims[:1], t.dims[1:]) if batched else ((), t.dims)
        o = old.get(t.name)
        if o is None or len(o) != len(body):
            return t  # a real difference: the signature check reports it
        return TensorSig(t.name, t.data_type, head + tuple(-1 if a == -1 else b for a, b in zip(o, body, strict=True)))

    return Signature(tuple(w(t) for t in sig.inputs), tuple(w(t) for t in sig.outputs))


def io_compatible(served: tuple, new: tuple) -> bool:
    """io_of() tuples equal but for dims the new config leaves dynamic (it is the one written)."""
    if served[:3] != new[:3] or len(served[3]) != len(new[3]) or len(served[4]) != len(new[4]):
        return False
    for a, b in zip((*served[3], *served[4]), (*new[3], *new[4]), strict=True):
        if a[:2] != b[:2] or len(a[2]) != len(b[2]):
            return False
        if any(x != y and y != -1 for x, y in zip(a[2], b[2], strict=True)):
            return False
    return True


# --------------------------------------------------------------------------------------------- flavours
class Flavour:
    """How one kind of artifact becomes a Triton version directory and a config.

    files(artifacts) -> {name inside <version>/: source path}; config(...) -> config.pbtxt text."""
    name = ""

    def files(self, artifacts: Mapping[str, Path]) -> dict[str, Path]:
        raise NotImplementedError

    def signature(self, artifacts: Mapping[str, Path], files: Mapping[str, Path]) -> Signature:
        raise NotImplementedError

    def config(self, model_name: str, sig: Signature, opts: ConfigOptions, files: Mapping[str, Path]) -> str:
        raise NotImplementedError

    def generated(self, model_name: str, sig: Signature, opts: ConfigOptions) -> dict[str, bytes]:
        """Extra files written into the version directory (e.g. model.py)."""
        return {}


def _pick(artifacts: Mapping[str, Path], suffix: str, what: str) -> Path:
    hits = [p for n, p in artifacts.items() if n.endswith(suffix)]
    if len(hits) != 1:
        raise ConfigError(f"{what} needs exactly one *{suffix} artifact, got {sorted(artifacts)}")
    return hits[0]


class OnnxRuntimeFlavour(Flavour):
    name = "onnxruntime"

    def files(self, artifacts):
        return {"model.onnx": _pick(artifacts, ".onnx", "onnxruntime flavour")}

    def signature(self, artifacts, files):
        return onnx_signature(files["model.onnx"])

    def config(self, model_name, sig, opts, files):
        return render_config(model_name, sig, opts, platform="onnxruntime_onnx")


class PythonOnnxFlavour(OnnxRuntimeFlavour):
    """backend: python; model.py runs <version>/model.onnx with ONNX Runtime inside Triton."""
    name = "python"

    def config(self, model_name, sig, opts, files):
        params = {"intra_op_threads": "1", **opts.parameters}
        o = ConfigOptions(opts.max_batch_size, opts.dynamic_batching, opts.instances, opts.versions, params)
        return render_config(model_name, sig, o, backend="python")

    def generated(self, model_name, sig, opts):
        return {"model.py": (Path(__file__).parent / "python_model.py").read_bytes()}


class TensorRTFlavour(Flavour):
    """One `model.plan`, or several engines keyed by compute capability -> cc_model_filenames.

    Artifacts: `*.plan` files named `model.plan` or `model_sm<CC>.plan` / `<anything>.sm<CC>.plan`
    (CC like 80, 86, 89, 90 → "8.0", "8.6" ...), plus the source `*.onnx` to read the signature from."""
    name = "tensorrt"

    @staticmethod
    def _cc(name: str) -> str | None:
        import re
        m = re.search(r"sm_?(\d+)(\d)(?!\d)", name)  # the last digit is the minor: sm89 -> 8.9, sm100 -> 10.0
        return f"{m.group(1)}.{m.group(2)}" if m else None

    def files(self, artifacts):
        plans = {n: p for n, p in artifacts.items() if n.endswith(".plan")}
        if not plans:
            raise ConfigError(f"tensorrt flavour needs *.plan artifacts, got {sorted(artifacts)}")
        out = {}
        if len(plans) == 1 and self._cc(next(iter(plans))) is None:
            out["model.plan"] = next(iter(plans.values()))
        else:
            for n, p in plans.items():
                cc = self._cc(n)
                if cc is None:
                    raise ConfigError(f"several engines but {n!r} names no compute capability (model_sm80.plan)")
                out[f"model_sm{cc.replace('.', '')}.plan"] = p
        onnx_src = [p for n, p in artifacts.items() if n.endswith(".onnx")]
        if onnx_src:
            out["source.onnx"] = onnx_src[0]  # kept for the record and the signature
        return out

    def signature(self, artifacts, files):
        if "source.onnx" not in files:
            raise ConfigError("tensorrt flavour needs the source .onnx beside the engines to read the signature "
                              "(an engine cannot be inspected without TensorRT)")
        return onnx_signature(files["source.onnx"])

    def config(self, model_name, sig, opts, files):
        ccs = {self._cc(n): n for n in files if n.endswith(".plan") and self._cc(n)}
        extra = ""
        if ccs:
            entries = ",\n".join(f"  {{ key: {_q(cc)} value: {_q(fn)} }}" for cc, fn in sorted(ccs.items()))
            extra = f"cc_model_filenames [\n{entries}\n]\n"
        return render_config(model_name, sig, opts, platform="tensorrt_plan", kind="KIND_GPU", extra=extra)


FLAVOURS: dict[str, Flavour] = {}


def register_flavour(f: Flavour) -> None:
    """Hook for more backends (e.g. openvino: files {model.xml, model.bin}, `backend: "openvino"`)."""
    FLAVOURS[f.name] = f


for _f in (OnnxRuntimeFlavour(), PythonOnnxFlavour(), TensorRTFlavour()):
    register_flavour(_f)

# runtime of the winning candidate -> flavour, for publish.flavour == "auto"
AUTO_FLAVOUR = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "openvino": "openvino",
                "onnxruntime-genai": "genai"}


def flavour_for(requested: str, runtime: str) -> Flavour:
    name = AUTO_FLAVOUR.get(runtime, runtime) if requested in ("", "auto", None) else requested
    if f"{name}:{runtime}" in FLAVOURS:  # a runtime-specific variant (python:openvino runs OpenVINO in Triton)
        name = f"{name}:{runtime}"
    if name not in FLAVOURS:
        raise ConfigError(f"no Triton flavour {name!r} registered (have {sorted(FLAVOURS)})")
    return FLAVOURS[name]
