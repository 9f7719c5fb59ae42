"""`quantize` on runtime tensorrt: precision decided in the ONNX graph, with NVIDIA Model Optimizer's ONNX tools,
on the CPU.

TensorRT 11 removed the builder precision flags and its INT8 calibrators; a strongly typed network runs what the
graph says. So the candidate's precision is written into the graph here, where ONNX Runtime can run it:

    int8, fp8   modelopt.onnx.quantization.quantize: Q/DQ nodes placed by ModelOpt's TensorRT rules, calibrated
                on spec.data.calibration ('max' for calibration.method minmax, 'entropy' for entropy), the rest
                of the graph in FP16 (TensorRT's usual INT8/FP8 + FP16 mix; highPrecision fp32 keeps it FP32);
                excludeNodes and the nodes automatic mixed precision keeps in float -> nodes_to_exclude
    int4        the same tool, weight-only blocked INT4 on MatMul weights (RTN: round to nearest, no calibration)
    fp16, bf16  modelopt.onnx.autocast.convert_to_mixed_precision: casts around the nodes that go low, with
                AutoCast's own rules fed by the calibration data (nodes whose values overflow stay FP32);
                excludeNodes stay FP32

Every such graph is then evaluated on the CPU before any engine is built (worker/pipeline.py): Q/DQ graphs run
as they are on ONNX Runtime's CPU provider (its FP8 Q/DQ matches ml_dtypes' E4M3 rounding exactly), while FP16
and BF16 graphs run through `emulate_low_precision`, which ONNX Runtime's CPU kernels need (it has no BF16
convolution): the same graph in FP32 with every FP16/BF16 tensor rounded to its type after every node. That is
storage rounding, not the GPU's kernels (which accumulate in FP32 too, but in their own order), so its figures
are labelled emulated. A candidate that breaks the budget there never costs a GPU build.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic.alias_generators import to_camel

from ..errors import WorkerError
from .base import ModelState, Pass, PassContext
from .quantize import QuantizeConfig

log = logging.getLogger("lathe.worker.graph_precision")

# precision -> what TensorRT is asked for (backends/tensorrt.py's audit compares the engine with it)
REQUESTED = {"int8": "INT8", "fp8": "FP8", "int4": "INT4", "fp16": "FP16", "bf16": "BF16"}
_METHOD = {"minmax": "max", "entropy": "entropy"}  # calibration.method -> ModelOpt's calibration_method
# QuantizeConfig fields that are ONNX Runtime quantizer settings: ModelOpt places Q/DQ by TensorRT's own rules
_ORT_ONLY = ("per_channel", "activation_type", "weight_type")


class GraphPrecision(Pass):
    name = "quantize"
    runtime = "tensorrt"
    Config = QuantizeConfig
    runtime_only: ClassVar[dict[str, tuple[str, ...]]] = {"preset": ("openvino",), "modelType": ("openvino",)}

    @classmethod
    def check(cls, c: QuantizeConfig, ctx: dict[str, Any]) -> list[tuple[str, str]]:
        p: list[tuple[str, str]] = []
        prec = c.precision
        if c.mode not in (None, "static") and prec in ("int8", "fp8"):
            p.append(("mode", f"runtime tensorrt calibrates {prec} statically (ModelOpt Q/DQ): mode must be static "
                              f"or unset (mode is {c.mode}; quantization-aware training for TensorRT is not built)"))
        elif c.mode is not None and prec not in ("int8", "fp8"):
            p.append(("mode", f"not a setting of precision {prec} on runtime tensorrt"))
        for f in _ORT_ONLY:
            if getattr(c, f) is not None:
                p.append((to_camel(f), "an ONNX Runtime quantizer setting; on runtime tensorrt ModelOpt places the "
                                     "Q/DQ nodes by TensorRT's rules (per-channel weights, per-tensor activations)"))
        if c.calibration is not None:
            if prec not in ("int8", "fp8"):
                p.append(("calibration", f"not a setting of precision {prec} (int8 and fp8 calibrate)"))
            elif c.calibration.method not in _METHOD:
                p.append(("calibration.method", f"ModelOpt calibrates with max (minmax) or entropy, not "
                                                f"{c.calibration.method}"))
        if c.block_size is not None and prec != "int4":
            p.append(("blockSize", f"only used by precision int4 (precision is {prec})"))
        if c.keep_io_types is not None and prec not in ("fp16", "bf16"):
            p.append(("keepIoTypes", f"only used by precisions fp16 and bf16 (precision is {prec})"))
        if c.op_types is not None and prec in ("fp16", "bf16", "int4"):
            p.append(("opTypes", f"only used by precisions int8 and fp8 (precision is {prec})"))
        if ctx.get("device") not in (None, "gpu"):
            p.append(("precision", "runtime tensorrt needs target.device gpu"))
        return p

    def describe(self) -> str:
        c = self.config
        if c.precision in ("int8", "fp8"):
            method = _METHOD.get(c.calibration.method if c.calibration else "minmax", "max")
            return f"modelopt({c.precision} q/dq,{method},rest fp16)"
        if c.precision == "int4":
            return f"modelopt(int4 weights,block {self._block()})"
        return f"autocast({c.precision})"

    def _block(self) -> int:
        return self.config.block_size or 128

    # ------------------------------------------------------------------ run
    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        c = self.config
        if ctx.coverage is not None and c.precision in ("int8", "fp8"):
            ctx.coverage.raise_for_errors()
            state.out_of_range = ctx.coverage.out_of_range
            state.warnings.extend(w for w in ctx.coverage.warnings if w not in state.warnings)
        src = Path(state.onnx_path)
        out = Path(ctx.workdir) / f"{c.precision}{'-mp' + str(len(state.float_nodes)) if state.float_nodes else ''}.onnx"
        exclude = list(dict.fromkeys([*c.exclude_nodes, *state.float_nodes]))
        _quiet_modelopt()
        if c.precision in ("fp16", "bf16"):
            self._autocast(src, out, exclude, ctx)
        else:
            self._quantize(src, out, exclude, ctx)
        requested = REQUESTED[str(c.precision)]
        if requested in ("INT8", "FP8", "INT4"):
            from ..backends.tensorrt import graph_precision  # noqa: PLC0415 - onnx only

            got = graph_precision(out)
            if got != requested:
                # "enabled INT8 but the engine still runs FP16", caught before any build
                raise WorkerError("pass:quantize", f"ModelOpt placed no {requested} Q/DQ in this graph (it is "
                                  f"{got}): its TensorRT rules leave out convolutions with fewer than 16 channels "
                                  "and matrix multiplies with a dimension under 16 or of one row; an engine of it "
                                  f"would not run {requested}")
        state.quantize_pass = self
        state.quantize_input = src
        state.onnx_path = out
        state.quantized = True
        state.info["requested_precision"] = requested
        return state

    def _calibration(self, ctx: PassContext) -> dict[str, np.ndarray]:
        cal = ctx.calibration
        samples = self.config.calibration.samples if self.config.calibration else None
        if samples and hasattr(cal, "head"):
            cal = cal.head(samples)
        return {k: np.ascontiguousarray(v) for k, v in cal.feeds.items()}

    def _quantize(self, src: Path, out: Path, exclude: list[str], ctx: PassContext) -> None:
        from modelopt.onnx.quantization import quantize  # noqa: PLC0415

        c = self.config
        kw: dict[str, Any] = {}
        if c.precision == "int4":
            kw = {"calibration_method": "rtn_dq", "block_size": self._block()}
        else:
            kw = {"calibration_method": _METHOD.get(c.calibration.method if c.calibration else "minmax", "max"),
                  "calibration_data": self._calibration(ctx), "high_precision_dtype": "fp16"}
            if c.op_types:
                kw["op_types_to_quantize"] = list(c.op_types)
        ctx.report("modelopt", 0.0, f"{c.precision} on {src.name}" + (f", {len(exclude)} node(s) excluded"
                                                                      if exclude else ""))
        with tempfile.TemporaryDirectory(prefix="lathe-modelopt-") as tmp, ort_quantization_restored():
            # ModelOpt writes intermediate files beside its input: work on a copy in a scratch folder
            tsrc = Path(tmp) / "model.onnx"
            _copy_model(src, tsrc)
            quantize(str(tsrc), quantize_mode=str(c.precision), calibration_eps=["cpu"], output_path=str(out),
                     nodes_to_exclude=exclude or None, log_level="WARNING", **kw)
        if not out.exists():
            raise RuntimeError(f"ModelOpt wrote no {c.precision} graph")

    def _autocast(self, src: Path, out: Path, exclude: list[str], ctx: PassContext) -> None:
        import onnx  # noqa: PLC0415
        from modelopt.onnx.autocast import convert_to_mixed_precision  # noqa: PLC0415

        c = self.config
        ctx.report("autocast", 0.0, f"{c.precision} on {src.name}")
        with tempfile.TemporaryDirectory(prefix="lathe-autocast-") as tmp:
            cal = Path(tmp) / "calibration.npz"
            np.savez(cal, **self._calibration(ctx))
            model = convert_to_mixed_precision(
                str(src), low_precision_type=str(c.precision), nodes_to_exclude=exclude or None,
                keep_io_types=True if c.keep_io_types is None else bool(c.keep_io_types), calibration_data=str(cal))
        onnx.save(model, str(out))

    # ------------------------------------------------------------------ mixed precision (int8, fp8)
    def quantizable_nodes(self, src: Path) -> list[str]:
        """Nodes ModelOpt puts Q/DQ in front of: the weight layers (Conv, Gemm, MatMul) of the float graph."""
        import onnx  # noqa: PLC0415

        m = onnx.load(str(src), load_external_data=False)
        return [n.name for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]


def _copy_model(src: Path, dst: Path) -> None:
    import onnx  # noqa: PLC0415

    onnx.save(onnx.load(str(src)), str(dst))  # external data folded in: the copy stands alone


# ONNX Runtime quantization modules whose classes ModelOpt's quantize() patches in place, process-wide
# (modelopt/onnx/quantization/ort_patching.py: calibrators, collectors, quantizers)
_ORT_PATCHED = ("onnxruntime.quantization.calibrate", "onnxruntime.quantization.base_quantizer",
                "onnxruntime.quantization.qdq_quantizer", "onnxruntime.quantization.onnx_quantizer")


@contextlib.contextmanager
def ort_quantization_restored() -> Iterator[None]:
    """Undo what ModelOpt's quantize() patches into ONNX Runtime's quantization classes and modules once it is
    done: the worker runs onnxruntime candidates in the same process, and after a patched run ONNX Runtime's own
    static quantization failed (`TypeError: argument of type 'NoneType' is not iterable`)."""
    import importlib  # noqa: PLC0415

    saved: list[tuple[Any, dict[str, Any]]] = []
    for name in _ORT_PATCHED:
        mod = importlib.import_module(name)
        saved.append((mod, dict(vars(mod))))
        saved += [(cls, dict(vars(cls))) for cls in vars(mod).values()
                  if isinstance(cls, type) and cls.__module__ == name]
    try:
        yield
    finally:
        for obj, before in saved:
            now = vars(obj)
            for key in [k for k in now if k not in before]:
                delattr(obj, key)
            for key, value in before.items():
                if now.get(key, _MISSING) is not value:
                    setattr(obj, key, value)


_MISSING = object()


def _quiet_modelopt() -> None:
    # ModelOpt logs per-tensor calibration progress at INFO and a GPU-count error where there is no NVML
    for name in ("modelopt", "modelopt.onnx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# ====================================================================================== emulation
def needs_emulation(onnx_path: str | Path) -> bool:
    """True when the graph holds FP16/BF16 tensors (ONNX Runtime's CPU kernels lack many of them)."""
    import onnx  # noqa: PLC0415

    m = onnx.load(str(onnx_path), load_external_data=False)
    low = _low_types()
    if any(i.data_type in low for i in m.graph.initializer):
        return True
    return any(a.name == "to" and a.i in low for n in m.graph.node if n.op_type == "Cast" for a in n.attribute)


def _low_types() -> set[int]:
    from onnx import TensorProto  # noqa: PLC0415

    return {TensorProto.FLOAT16, TensorProto.BFLOAT16}


def emulate_low_precision(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Write `dst`: `src` computed in FP32 with every FP16/BF16 tensor rounded to its type, so ONNX Runtime's CPU
    provider can evaluate a mixed-precision graph it has no kernels for. FP16/BF16 initializers and constants
    become the FP32 values they hold; a Cast to FP16/BF16 becomes that Cast followed by a Cast back to FP32; every
    other node whose output was FP16/BF16 gets the same round trip after it. Returns counts for the record."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    low = _low_types()
    m = onnx.load(str(src))
    inferred = onnx.shape_inference.infer_shapes(m)
    etype = {vi.name: vi.type.tensor_type.elem_type for vi in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    g = m.graph
    stats = {"initializers": 0, "casts": 0, "rounded": 0}

    def widen(t: onnx.TensorProto) -> onnx.TensorProto:
        arr = numpy_helper.to_array(t).astype(np.float32)
        return numpy_helper.from_array(arr, t.name)

    for k, t in enumerate(list(g.initializer)):
        if t.data_type in low:
            g.initializer[k].CopyFrom(widen(t))
            stats["initializers"] += 1
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        if n.op_type in ("Constant", "ConstantOfShape"):
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in low:
                    a.t.CopyFrom(widen(a.t))
        elif n.op_type in ("RandomNormal", "RandomUniform", "EyeLike") and any(
                a.name == "dtype" and a.i in low for a in n.attribute):
            raise ValueError(f"cannot emulate {n.op_type} '{n.name}' with a reduced-precision dtype attribute")
        nodes.append(n)
        if n.op_type == "Cast":
            to = next(a.i for a in n.attribute if a.name == "to")
            if to in low:
                raw = n.output[0] + "__lowp"
                out = n.output[0]
                n.output[0] = raw
                nodes.append(helper.make_node("Cast", [raw], [out], to=TensorProto.FLOAT, name=f"{out}__emulate"))
                stats["casts"] += 1
            continue
        for j, o in enumerate(n.output):
            if o and etype.get(o) in low:
                raw = o + "__lowp"
                n.output[j] = raw
                # named after the tensor: unique where node names may be empty
                nodes += [helper.make_node("Cast", [raw], [raw + "_r"], to=etype[o], name=f"{o}__round"),
                          helper.make_node("Cast", [raw + "_r"], [o], to=TensorProto.FLOAT, name=f"{o}__back")]
                stats["rounded"] += 1
    del g.node[:]
    g.node.extend(nodes)
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type in low:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    del g.value_info[:]
    onnx.save(m, str(dst))
    return stats
