"""OpenVINO on CPU behind the worker's Backend interface.

build(onnx_path, outdir, options):
    ONNX --openvino.convert_model--> ov.Model
         --reshape (optional: options["shapes"], dims pinned by spec.model.inputs)-->
         --nncf.quantize (optional: options["quantize"], from the worker's calibration arrays)-->
    outdir/model.xml + outdir/model.bin (FP32 weights kept: compress_to_fp16=False)

options (all optional):
    quantize        None (plain FP32 build) or a dict:
                      preset        "performance" (NNCF default, symmetric) | "mixed" (asymmetric activations)
                      model_type    "transformer" | None | "auto" (default "auto": detect the graph)
                      exclude_nodes ONNX node names kept in float (PassSpec.excludeNodes and the nodes
                                    mixed precision ranked most sensitive) -> nncf.IgnoredScope
                      subset_size   calibration samples used (default: all, at most 300)
                      fast_bias_correction (default True)
    calibration     the calibration samples: a worker data.Dataset, a {input: array} dict (first axis =
                    samples) or a list of feed dicts; required when quantize is set
    shapes          {input name: [dims]} to reshape to; an int pins a dim, a str/None/-1 keeps it dynamic
    inference_precision  CPU INFERENCE_PRECISION_HINT used by load() (default "f32": an FP32 candidate must
                    not silently run in bf16 on CPUs that have it)
    performance_hint     "LATENCY" (default: one stream, the threads given to load) or "THROUGHPUT"
    specialize_shapes    load() compiles one fully static model per distinct input shape it is fed (cached,
                    LRU 8) instead of one dynamic model: the static CPU kernels, without pinning the spec
A build with the same source, shapes, NNCF settings and calibration data as an earlier one in this process
reuses its IR (copied), so candidates differing only in how they load share one NNCF run.

The precision audit (`precision()`) compiles the artifact and reads every runtime layer's rt_info
(`runtimePrecision`, `outputPrecisions`, `layerType`, `originalLayersNames`) from
`compiled.get_runtime_model()`: what the CPU plugin really executes, not what the IR asks for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .base import Artifact, Backend, Runner, register_backend
from .openvino_common import detect_transformer_onnx, pinned_shapes

log = logging.getLogger("lathe.worker.openvino")

PRESETS = ("performance", "mixed")
# runtime layer types that do the heavy lifting: the audit's summary counts these
COMPUTE_LAYERS = ("FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Deconvolution",
                  "ScaledDotProductAttention", "ScaledAttn", "Gemm")
_SKIP_LAYERS = {"Input", "Output", "Const", "Parameter", "Result"}
_PRECISION_NAMES = {"i8": "INT8", "u8": "INT8", "f32": "FP32", "f16": "FP16", "bf16": "BF16", "i32": "INT32",
                    "i64": "INT64", "u1": "BIN", "i4": "INT4", "u4": "INT4", "boolean": "BOOL", "dynamic": "DYNAMIC",
                    "f64": "FP64", "u16": "UINT16", "i16": "INT16", "u32": "UINT32", "u64": "UINT64",
                    "undefined": "UNDEFINED"}


def _precision_name(p: str) -> str:
    return _PRECISION_NAMES.get(p, p.upper())


def _layer_precision(row: dict[str, str]) -> str:
    """A runtime layer's precision; FakeQuantize (quantize/requantize) is CONVERT, as Q/DQ are for ONNX Runtime."""
    if row["type"] == "FakeQuantize":
        return "CONVERT"
    if row["runtimePrecision"] == "u8" and row["type"] not in COMPUTE_LAYERS:
        return "UINT8"  # boolean masks move as u8 in FP32 models too: not quantized arithmetic
    return _precision_name(row["runtimePrecision"])


# ----------------------------------------------------------------------------------------- detection
def detect_transformer_ov(model) -> list[str]:
    """Why an ov.Model looks like a transformer (empty when it does not): attention (SDPA, or a Softmax
    fed by an activation x activation MatMul) together with layer normalisation (MVN) or several MatMuls."""
    ops = list(model.get_ordered_ops())
    types = Counter(op.get_type_name() for op in ops)
    reasons: list[str] = []
    if types.get("ScaledDotProductAttention"):
        reasons.append(f"{types['ScaledDotProductAttention']} ScaledDotProductAttention op(s)")
    act_matmuls = 0
    for op in ops:
        if op.get_type_name() != "MatMul":
            continue
        srcs = [op.input_value(i).get_node() for i in range(2)]
        if not any(_is_const(s) for s in srcs):
            act_matmuls += 1
    if types.get("Softmax") or types.get("SoftMax"):
        if act_matmuls:
            reasons.append(f"Softmax with {act_matmuls} activation x activation MatMul(s) (attention)")
    if reasons and (types.get("MVN") or types.get("LayerNorm")):
        reasons.append(f"{types.get('MVN', 0) + types.get('LayerNorm', 0)} layer normalisation(s) (MVN)")
    return reasons


def _is_const(node) -> bool:
    """A Constant, possibly behind Convert/Reshape/Transpose/FakeQuantize chains of constants."""
    seen = 0
    while node is not None and seen < 8:
        t = node.get_type_name()
        if t == "Constant":
            return True
        if t not in ("Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Multiply", "Subtract",
                     "FakeQuantize"):
            return False
        node = node.input_value(0).get_node()
        seen += 1
    return False


# ------------------------------------------------------------------------------------------ helpers
def _feeds_list(calibration: Any, batch: int = 1, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Calibration samples as a list of feed dicts of `batch` samples each."""
    if calibration is None:
        return []
    if isinstance(calibration, list):
        return calibration[:limit] if limit else calibration
    feeds = getattr(calibration, "feeds", calibration)  # data.Dataset or a plain dict of arrays
    n = len(next(iter(feeds.values())))
    if limit:
        n = min(n, limit * batch)
    out = []
    for i in range(0, n - batch + 1 if n >= batch else 1, batch):
        idx = np.arange(i, i + batch) % max(1, len(next(iter(feeds.values()))))
        out.append({k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()})
    return out


def _partial_shape(dims):
    import openvino as ov  # noqa: PLC0415

    return ov.PartialShape([ov.Dimension(d) if isinstance(d, int) and d > 0 else ov.Dimension() for d in dims])


def _ov_names(model) -> set[str]:
    return {op.get_friendly_name() for op in model.get_ops()}


def map_exclusions(onnx_path: str | Path, model, nodes: list[str]) -> tuple[list[str], list[str]]:
    """ONNX node names -> OpenVINO op names for nncf.IgnoredScope. OpenVINO's ONNX frontend keeps node names
    as friendly names, but splits a Conv or Gemm with a bias into the weight op `<name>/WithoutBiases` and an
    Add named `<name>`: both are ignored, else the weight op (and its input) stays quantized. Otherwise the
    node's output tensor names are tried. Returns (matched, unmatched)."""
    if not nodes:
        return [], []
    names = _ov_names(model)
    matched, unmatched = [], []
    outputs: dict[str, list[str]] = {}
    for n in nodes:
        if n in names:
            matched.append(n)
            if f"{n}/WithoutBiases" in names:
                matched.append(f"{n}/WithoutBiases")
            continue
        if not outputs:
            import onnx  # noqa: PLC0415

            g = onnx.load(str(onnx_path), load_external_data=False).graph
            outputs = {nd.name: list(nd.output) for nd in g.node}
        alt = [o for o in outputs.get(n, []) if o in names]
        (matched.extend(alt) if alt else unmatched.append(n))
    return list(dict.fromkeys(matched)), unmatched


# how an artifact is loaded, not what it is: left out of the build cache key
_LOAD_OPTIONS = ("specialize_shapes", "inference_precision", "performance_hint")
_BUILT: dict[str, tuple[Artifact, tuple]] = {}


def _stamp(files: list[Path]) -> tuple | None:
    """Size and mtime of the files: a cached build whose files were rewritten since is not reused."""
    try:
        return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:
        return None


def _load_meta(options: dict[str, Any]) -> dict[str, Any]:
    return {"inference_precision": options.get("inference_precision", "f32"),
            "performance_hint": options.get("performance_hint", "LATENCY"),
            "specialize_shapes": bool(options.get("specialize_shapes", False))}


def _build_key(onnx_path: Path, options: dict[str, Any]) -> str:
    h = hashlib.sha256()
    st = Path(onnx_path).stat()
    h.update(f"{Path(onnx_path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    rest = {k: v for k, v in options.items() if k not in _LOAD_OPTIONS and k != "calibration"}
    h.update(json.dumps(rest, sort_keys=True, default=str).encode())
    if options.get("quantize") is not None:
        cal = options.get("calibration")
        arrays = getattr(cal, "feeds", cal)
        if isinstance(arrays, dict):
            for k in sorted(arrays):
                h.update(k.encode())
                h.update(np.ascontiguousarray(arrays[k]).tobytes())
        else:  # a list of feed dicts
            for feeds in arrays or []:
                for k in sorted(feeds):
                    h.update(np.ascontiguousarray(feeds[k]).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ backend
@register_backend
class OpenVINOBackend(Backend):
    name = "openvino"

    @classmethod
    def available(cls) -> str | None:
        try:
            import openvino  # noqa: F401, PLC0415
        except ImportError as e:  # pragma: no cover - installed in the venv
            return f"openvino is not installed ({e})"
        return None

    # ---------------------------------------------------------------- build
    def build_options(self, ctx: Any, state: Any) -> dict[str, Any]:
        """What the pipeline hands to build() for a candidate: the NNCF settings a `quantize` pass
        recorded (state.info["openvino"]) and the shapes the spec pins."""
        opts = dict((getattr(state, "info", None) or {}).get("openvino", {}))
        shapes = pinned_shapes(getattr(ctx, "spec", None))
        if shapes:
            opts.setdefault("shapes", shapes)
        return opts

    def build(self, onnx_path: Path, outdir: Path, options: dict[str, Any]) -> Artifact:
        import openvino as ov  # noqa: PLC0415

        options = dict(options or {})
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        key = _build_key(onnx_path, options)
        cached, stamp = _BUILT.get(key, (None, None))
        if cached is not None and _stamp(cached.files) == stamp:
            # same source, shapes, NNCF settings and calibration data: the same IR (NNCF is deterministic);
            # candidates that differ only in how they load (specialize_shapes, hints) share one quantization
            files = []
            for f in cached.files:
                if f.parent.resolve() != outdir.resolve():
                    shutil.copy2(f, outdir / f.name)
                files.append(outdir / f.name)
            meta = {**cached.meta, **_load_meta(options), "reused_from": str(cached.path)}
            (outdir / "openvino.json").write_text(json.dumps(meta, indent=2, default=str))
            return Artifact(runtime=self.name, files=files, meta=meta)
        model = ov.convert_model(str(onnx_path))
        meta: dict[str, Any] = {"openvino": ov.get_version(), "source": str(onnx_path), **_load_meta(options)}
        shapes = options.get("shapes")
        if shapes:
            want = {}
            for inp in model.inputs:
                name = inp.get_any_name()
                if name in shapes and shapes[name]:
                    want[name] = _partial_shape(shapes[name])
            if want:
                model.reshape(want)
                meta["shapes"] = {k: str(v) for k, v in want.items()}
        reasons = detect_transformer_ov(model)
        meta["transformer"] = bool(reasons)
        meta["transformer_evidence"] = reasons
        q = options.get("quantize")
        if q is not None and q is not False:
            q = {} if q is True else q
            model = self._quantize(model, onnx_path, q, options, meta)
        xml = outdir / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        (outdir / "openvino.json").write_text(json.dumps(meta, indent=2, default=str))
        art = Artifact(runtime=self.name, files=[xml, xml.with_suffix(".bin")], meta=meta)
        _BUILT[key] = (art, _stamp(art.files))
        return art

    def _quantize(self, model, onnx_path: Path, q: dict[str, Any], options: dict[str, Any], meta: dict):
        import nncf  # noqa: PLC0415

        preset_name = q.get("preset") or "performance"
        if preset_name not in PRESETS:
            raise ValueError(f"openvino quantize: preset must be one of {PRESETS}, got {preset_name!r}")
        mt = q.get("model_type", "auto")
        if mt == "auto":
            mt = "transformer" if meta["transformer"] else None
        if mt not in (None, "transformer"):
            raise ValueError(f"openvino quantize: model_type must be transformer or unset, got {mt!r}")
        batch = 1
        fixed = [inp.get_partial_shape() for inp in model.inputs]
        if fixed and all(ps.rank.is_static and len(ps) and ps[0].is_static for ps in fixed):
            batch = fixed[0][0].get_length()
        subset = q.get("subset_size") or 300
        samples = _feeds_list(options.get("calibration"), batch=batch, limit=subset)
        if not samples:
            raise ValueError("openvino quantize needs calibration samples (options['calibration'])")
        matched, unmatched = map_exclusions(onnx_path, model, list(q.get("exclude_nodes") or []))
        kwargs: dict[str, Any] = {
            "preset": nncf.QuantizationPreset.MIXED if preset_name == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
            "subset_size": len(samples),
            "fast_bias_correction": bool(q.get("fast_bias_correction", True)),
        }
        if mt == "transformer":
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        if matched:
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=matched, validate=False)
        log.info("nncf.quantize preset=%s model_type=%s samples=%d ignored=%d", preset_name, mt, len(samples),
                 len(matched))
        out = nncf.quantize(model, nncf.Dataset(samples), **kwargs)
        meta.update({"quantized": True, "nncf": nncf.__version__, "preset": preset_name, "model_type": mt,
                     "calibration_samples": len(samples) * batch, "ignored": matched,
                     "unmatched_excludes": unmatched})
        return out

    # ---------------------------------------------------------------- run
    @staticmethod
    def _meta(artifact: Artifact) -> dict[str, Any]:
        """The artifact's meta, or the openvino.json written beside model.xml (an Artifact rebuilt from paths)."""
        if artifact.meta:
            return artifact.meta
        try:
            return json.loads((Path(artifact.path).parent / "openvino.json").read_text())
        except (OSError, ValueError):
            return {}

    @classmethod
    def _config(cls, artifact: Artifact, threads: int) -> dict[str, Any]:
        meta = cls._meta(artifact)
        cfg: dict[str, Any] = {"PERFORMANCE_HINT": meta.get("performance_hint", "LATENCY"),
                               "INFERENCE_PRECISION_HINT": meta.get("inference_precision", "f32")}
        if threads and threads > 0:
            cfg["INFERENCE_NUM_THREADS"] = int(threads)
        return cfg

    def compile(self, artifact: Artifact, threads: int = 0):
        import openvino as ov  # noqa: PLC0415

        core = ov.Core()
        return core.compile_model(str(artifact.path), "CPU", self._config(artifact, threads))

    def load(self, artifact: Artifact, threads: int) -> Runner:
        if self._meta(artifact).get("specialize_shapes"):
            return self._specialized(artifact, threads)
        compiled = self.compile(artifact, threads)
        request = compiled.create_infer_request()
        outputs = list(compiled.outputs)

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            res = request.infer(feeds)
            return [np.array(res[o], copy=True) for o in outputs]

        run.compiled = compiled  # type: ignore[attr-defined]
        return run

    def _specialized(self, artifact: Artifact, threads: int, cache_size: int = 8) -> Runner:
        """One compiled model per distinct input shape (the IR reshaped to it: fully static, which lets the
        CPU plugin pick its static kernels), least recently used dropped beyond `cache_size`."""
        from collections import OrderedDict  # noqa: PLC0415

        import openvino as ov  # noqa: PLC0415

        core = ov.Core()
        cfg = self._config(artifact, threads)
        cache: OrderedDict = OrderedDict()

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            key = tuple(sorted((k, v.shape) for k, v in feeds.items()))
            hit = cache.get(key)
            if hit is None:
                model = core.read_model(str(artifact.path))
                model.reshape({inp.get_any_name(): ov.PartialShape(list(feeds[inp.get_any_name()].shape))
                               for inp in model.inputs if inp.get_any_name() in feeds})
                compiled = core.compile_model(model, "CPU", cfg)
                hit = cache[key] = (compiled.create_infer_request(), list(compiled.outputs))
                while len(cache) > cache_size:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(key)
            request, outputs = hit
            res = request.infer(feeds)
            return [np.array(res[o], copy=True) for o in outputs]

        run.cache = cache  # type: ignore[attr-defined]
        return run

    # ---------------------------------------------------------------- precision audit
    def layers(self, artifact: Artifact, compiled=None) -> list[dict[str, str]]:
        """Every runtime layer: name, layerType, runtimePrecision, outputPrecisions, originalLayersNames."""
        compiled = compiled or self.compile(artifact, 1)
        out = []
        for op in compiled.get_runtime_model().get_ordered_ops():
            ri = op.get_rt_info()

            def get(k, ri=ri):
                return ri[k].astype(str) if k in ri else ""

            out.append({"name": op.get_friendly_name(), "type": get("layerType"),
                        "runtimePrecision": get("runtimePrecision"), "outputPrecisions": get("outputPrecisions"),
                        "original": get("originalLayersNames")})
        return out

    def precision(self, artifact: Artifact) -> dict[str, str]:
        """Runtime layer name -> the precision the CPU plugin executes it in (INT8, FP32, BF16, ...).
        Inputs, outputs and constants are left out; see `audit()` for the summary."""
        rows = self.layers(artifact)
        audit = self.audit(artifact, rows=rows)
        try:  # the per-layer audit beside the artifact (precision.json), for the report and for people
            (Path(artifact.path).parent / "precision.json").write_text(json.dumps(audit, indent=1))
        except OSError:
            pass
        return dict(audit["layers"])

    def audit(self, artifact: Artifact, compiled=None, rows: list[dict[str, str]] | None = None) -> dict[str, Any]:
        """Per-layer precision plus a summary of the compute layers (FullyConnected/Convolution/MatMul...)."""
        rows = [r for r in (rows if rows is not None else self.layers(artifact, compiled))
                if r["type"] not in _SKIP_LAYERS]
        compute = [r for r in rows if r["type"] in COMPUTE_LAYERS]
        by = Counter(_layer_precision(r) for r in compute)
        return {"layers": {r["name"]: _layer_precision(r) for r in rows},
                "compute": {r["name"]: {"type": r["type"], "precision": _layer_precision(r),
                                    "original": [o for o in r["original"].split(",") if o]}
                            for r in compute},
                "summary": dict(by),
                "int8_compute_share": round(by.get("INT8", 0) / len(compute), 4) if compute else 0.0,
                "float_compute": [r["name"] for r in compute if _layer_precision(r) != "INT8"]}


__all__ = ["OpenVINOBackend", "detect_transformer_ov", "detect_transformer_onnx", "map_exclusions"]
