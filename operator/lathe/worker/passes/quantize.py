"""`quantize`: INT8 (dynamic, static QDQ), FP16 and weight-only INT4 through ONNX Runtime's tools.

Defaults follow what was measured on MiniLM and a digits CNN (docs/worker.md):
- dynamic int8: weight MatMuls and embedding Gathers, per-channel s8 weights (ConvInteger is very
  slow on CPU, so convolutions are left out unless opTypes names them);
- static int8 QDQ: u8 activations, s8 per-channel weights; on MatMul models only the weight MatMuls
  are quantized and their outputs stay float; on convolutional models every op is quantized;
- entropy/percentile calibration runs our own histogram calibrator (quantize_static would silently
  fall back to MinMax bin sizes) and hands the ranges to ONNX Runtime through a calibration cache,
  which automatic mixed precision reuses when it re-quantizes.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from pydantic.alias_generators import to_camel

from ...api.spec import CalibrationSettings, IntType, Precision, QuantizationAwareTraining, QuantMode
from .base import ModelState, Pass, PassConfig, PassContext
from .qat import FLOAT_ONNX, train

log = logging.getLogger("lathe.worker.quantize")

FP16_BLOCK = ["Resize", "Range", "NonMaxSuppression", "TopK", "RoiAlign", "Upsample", "CumSum"]


class _Quiet(logging.Filter):
    """ONNX Runtime's quantization tools log a pre-processing hint and one line per node."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return "pre-process" not in msg


def quiet_ort_logs() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, _Quiet) for f in root.filters):
        root.addFilter(_Quiet())
    for name in ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization"):
        logging.getLogger(name).setLevel(logging.WARNING)


class QuantizeConfig(PassConfig):
    precision: Precision = Precision.int8
    mode: QuantMode | None = None
    calibration: CalibrationSettings | None = None
    per_channel: bool | None = None
    activation_type: IntType | None = None
    weight_type: IntType | None = None
    op_types: list[str] | None = None
    exclude_nodes: list[str] = Field(default_factory=list)
    keep_io_types: bool | None = None
    block_size: int | None = None
    preset: str | None = None
    model_type: str | None = None
    qat: QuantizationAwareTraining | None = None


class Quantize(Pass):
    name = "quantize"
    Config = QuantizeConfig
    runtime_only: ClassVar[dict[str, tuple[str, ...]]] = {"preset": ("openvino",), "modelType": ("openvino",)}

    @classmethod
    def check(cls, c: QuantizeConfig, ctx: dict[str, Any]) -> list[tuple[str, str]]:
        p: list[tuple[str, str]] = []
        prec = c.precision
        if prec in ("fp8", "bf16"):
            # ONNX Runtime's CPU kernels have neither; the graphs are TensorRT's (passes/graph_precision.py)
            return [("precision", f"{prec} is built by runtime tensorrt only (candidate runtime is {ctx.get('runtime')})")]
        if c.qat is not None and c.mode != "qat":
            p.append(("qat", f"only used by mode qat (mode is {c.mode or 'dynamic'})"))
        if prec == "int8":
            if c.mode == "qat":
                p.extend(_qat_problems(c, ctx))
            if c.mode not in ("static", "qat"):
                for f in ("calibration", "activation_type"):
                    if getattr(c, f) is not None:
                        p.append((to_camel(f), f"only used by modes static and qat (mode is {c.mode or 'dynamic'})"))
        else:
            if c.mode is not None and c.mode != "dynamic":
                p.append(("mode", f"mode {c.mode} needs precision int8 (precision is {prec})"))
            for f in ("calibration", "per_channel", "activation_type", "weight_type"):
                if getattr(c, f) is not None:
                    p.append((to_camel(f), f"not a setting of precision {prec} (int8 only)"))
        if c.keep_io_types is not None and prec != "fp16":
            p.append(("keepIoTypes", f"only used by precision fp16 (precision is {prec})"))
        if c.block_size is not None:
            if prec != "int4":
                p.append(("blockSize", f"only used by precision int4 (precision is {prec})"))
            elif c.block_size & (c.block_size - 1):
                p.append(("blockSize", f"must be a power of two, got {c.block_size}"))
        if c.op_types is not None and prec == "int4" and set(c.op_types) - {"MatMul", "Gather"}:
            p.append(("opTypes", "int4 weight-only quantization handles MatMul (and Gather) only"))
        if ctx.get("runtime") == "onnxruntime":
            if c.activation_type == "int8" and c.mode == "static":
                pass  # allowed (s8/s8), just slower and less accurate than u8/s8 on CPU
        return p

    def static(self) -> bool:
        """INT8 static QDQ: mode static, and mode qat once its training is done."""
        return self.config.precision == "int8" and (self.config.mode or "dynamic") in ("static", "qat")

    def describe(self) -> str:
        c = self.config
        if c.precision == "int8":
            mode = c.mode or "dynamic"
            bits = [f"int8-{mode}"]
            if mode in ("static", "qat"):
                bits.append(c.calibration.method if c.calibration else "minmax")
            bits.append("per-channel" if self._per_channel() else "per-tensor")
            return "quantize(" + ",".join(bits) + ")"
        if c.precision == "int4":
            return f"quantize(int4,block {c.block_size or 32})"
        return "quantize(fp16)"

    def reduce_range(self) -> bool:
        """7-bit weights for static u8 x s8 on an x86 CPU without VNNI: its AVX2 kernel (vpmaddubsw)
        adds pairs of u8 x s8 products into int16 and saturates; on the 32x32 digits CNN 14% of the
        first convolution's outputs hit the cap and top-1 fell by 0.18 (ONNX Runtime's own advice
        for non-VNNI machines). The worker runs on the target node, so its CPU is the target's."""
        return (self.config.activation_type != "int8" and platform.machine() in ("x86_64", "AMD64")
                and not cpu_has_vnni())

    def _per_channel(self) -> bool:
        return True if self.config.per_channel is None else bool(self.config.per_channel)

    # ------------------------------------------------------------------ run
    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        quiet_ort_logs()
        static = self.static()
        if self.config.mode == "qat" and state.onnx_path.name != FLOAT_ONNX:
            # train through the quantizer, then quantize the fine-tuned float model statically below
            # (mixed precision re-runs this pass from that model: it does not train again)
            src = train(state, ctx, self.config.qat or QuantizationAwareTraining(), self)
            state.onnx_path = src
            state.info["before_quantize"] = src
            state.torch_module = None
        if static and self.reduce_range():
            note = "7-bit weights: this CPU has no VNNI"
            if note not in state.notes:
                state.notes.append(note)
        src = state.onnx_path
        dst = ctx.workdir / f"quantized-{self.config.precision}.onnx"
        state.quantize_pass = self
        state.quantize_input = src
        if static and ctx.coverage is not None:
            ctx.coverage.raise_for_errors()
            state.out_of_range = ctx.coverage.out_of_range
            state.warnings.extend(w for w in ctx.coverage.warnings if w not in state.warnings)
        self.apply(src, dst, ctx, list(state.float_nodes))
        if static and ctx.validation is not None:
            from ..activation_coverage import activation_coverage  # noqa: PLC0415

            method = (self.config.calibration or CalibrationSettings()).method
            state.activation_coverage = activation_coverage(src, ctx.workdir.parent / f"calibration-{method}.json",
                                                            ctx.validation, threads=ctx.threads)
        state.onnx_path = dst
        state.quantized = True
        return state

    def quantizable_nodes(self, src: Path) -> list[str]:
        """Names of the nodes this pass would quantize (what mixed precision may keep in float)."""
        import onnx  # noqa: PLC0415

        m = onnx.load(str(src), load_external_data=False)
        inits = {i.name for i in m.graph.initializer}
        ops = set(self._op_types(m))
        out = []
        for n in m.graph.node:
            if n.op_type in ops and len(n.input) > 1 and n.input[1] in inits:
                out.append(n.name)
            elif n.op_type in ops and self.config.precision == "fp16":
                out.append(n.name)
        return out

    def _op_types(self, m) -> list[str]:
        c = self.config
        if c.op_types:
            return list(c.op_types)
        if c.precision == "int4":
            return ["MatMul"]
        if c.precision == "fp16":
            return sorted({n.op_type for n in m.graph.node})
        if not self.static():
            return ["MatMul", "Gather"]  # weight MatMuls and embedding tables (4x smaller MiniLM, same cosine)
        return ["MatMul", "Gemm", "Conv"]

    def apply(self, src: Path, dst: Path, ctx: PassContext, float_nodes: list[str]) -> None:
        c = self.config
        exclude = list(dict.fromkeys([*c.exclude_nodes, *float_nodes]))
        if c.precision == "fp16":
            self._fp16(src, dst, exclude)
        elif c.precision == "int4":
            self._int4(src, dst, exclude)
        elif not self.static():
            self._dynamic(src, dst, exclude)
        else:
            self._static(src, dst, ctx, exclude)

    def _dynamic(self, src: Path, dst: Path, exclude: list[str]) -> None:
        import onnx  # noqa: PLC0415
        from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

        c = self.config
        m = onnx.load(str(src), load_external_data=False)
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=self._op_types(m), per_channel=self._per_channel(),
                         weight_type=QuantType.QUInt8 if c.weight_type == "uint8" else QuantType.QInt8,
                         nodes_to_exclude=exclude, extra_options={"MatMulConstBOnly": True})

    def _static(self, src: Path, dst: Path, ctx: PassContext, exclude: list[str]) -> None:
        import onnx  # noqa: PLC0415
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: PLC0415

        c = self.config
        cal = c.calibration or CalibrationSettings()
        m = onnx.load(str(src), load_external_data=False)
        family = getattr(ctx.model, "family", "other")
        inits = {i.name for i in m.graph.initializer}
        matmul_model = family == "transformer" or (c.op_types is not None and set(c.op_types) <= {"MatMul", "Gemm"})
        if matmul_model:
            # only the weight MatMuls (MatMulConstBOnly is ignored by static), outputs left in float
            ops = self._op_types(m)
            nodes = [n.name for n in m.graph.node if n.op_type in ops and len(n.input) > 1 and n.input[1] in inits]
            extra = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}
            op_types = list(ops)
        else:
            nodes = None
            extra = {}
            op_types = c.op_types
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[cal.method]
        # Beside the candidate's model, not in its scratch folder: the ranges it was quantized with stay
        # auditable after the run (and are reused by the fallback's re-quantizations).
        cache = ctx.workdir.parent / f"calibration-{cal.method}.json"
        if not cache.exists():
            self._calibrate(src, cache, ctx, method, cal, op_types)
        quantize_static(str(src), str(dst), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=op_types, per_channel=self._per_channel(),
                        reduce_range=self.reduce_range(),
                        activation_type=QuantType.QInt8 if c.activation_type == "int8" else QuantType.QUInt8,
                        weight_type=QuantType.QUInt8 if c.weight_type == "uint8" else QuantType.QInt8,
                        nodes_to_quantize=nodes, nodes_to_exclude=exclude, calibrate_method=method,
                        extra_options=extra, calibration_cache_path=str(cache))

    def _calibrate(self, src: Path, cache: Path, ctx: PassContext, method, cal: CalibrationSettings,
                   op_types) -> None:
        import tempfile  # noqa: PLC0415

        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data  # noqa: PLC0415
        from onnxruntime.quantization.quant_utils import load_model_with_shape_infer  # noqa: PLC0415

        data = ctx.calibration.head(cal.samples)
        options: dict[str, Any] = {}
        if cal.method == "entropy":
            options = {"num_bins": 2048, "num_quantized_bins": 128, "symmetric": False}
        elif cal.method == "percentile":
            options = {"num_bins": 2048, "percentile": cal.percentile, "symmetric": True}
        ctx.report("calibrate", 0.0, f"{cal.method} on {len(data)} samples")
        with tempfile.TemporaryDirectory(prefix="lathe-calib-") as tmp:
            model = load_model_with_shape_infer(Path(src))
            shaped = Path(tmp) / "model.onnx"
            import onnx  # noqa: PLC0415

            onnx.save(model, str(shaped))
            calibrator = create_calibrator(shaped, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=method, extra_options=options)
            batch = 8
            total = max(1, (len(data) + batch - 1) // batch)
            for i, feeds in enumerate(data.batches(batch)):
                calibrator.collect_data(_Reader([feeds]))
                ctx.report("calibrate", (i + 1) / total)
            ranges = calibrator.compute_data()
            del calibrator
        save_tensors_data(ranges, cache)

    def _fp16(self, src: Path, dst: Path, exclude: list[str]) -> None:
        import onnx  # noqa: PLC0415
        from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415

        c = self.config
        m = onnx.load(str(src))
        block = list(dict.fromkeys([*FP16_BLOCK, *(c.op_types or [])]))
        out = convert_float_to_float16(m, keep_io_types=True if c.keep_io_types is None else c.keep_io_types,
                                       op_block_list=block, node_block_list=exclude or None)
        onnx.save(out, str(dst))

    def _int4(self, src: Path, dst: Path, exclude: list[str]) -> None:
        import onnx  # noqa: PLC0415
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # noqa: PLC0415

        c = self.config
        m = onnx.load(str(src))
        q = MatMulNBitsQuantizer(m, bits=4, block_size=c.block_size or 32, is_symmetric=True,
                                 accuracy_level=4, nodes_to_exclude=exclude,
                                 op_types_to_quantize=tuple(c.op_types or ["MatMul"]))
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)


class _Reader:
    def __init__(self, batches: list[dict]):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - not used by collect_data
        pass


def _qat_problems(c: QuantizeConfig, ctx: dict[str, Any]) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    if ctx.get("format") not in ("torchscript", "pytorch-export"):
        p.append(("mode", f"qat trains the PyTorch model: it needs model.format torchscript or pytorch-export, "
                          f"not {ctx.get('format')}"))
    if ctx.get("runtime") not in (None, "onnxruntime"):
        p.append(("mode", f"qat builds an ONNX Runtime INT8 Q/DQ model; runtime {ctx.get('runtime')} is not "
                          "supported (use runtime onnxruntime)"))
    earlier = [q for q in ctx.get("passes", [])[: ctx.get("index", 0)]]
    if any(not (q.type == "prune" and q.method == "structured") for q in earlier):
        p.append(("mode", f"qat trains the PyTorch model and must come first or right after structured pruning "
                          f"(after {[q.type for q in earlier]})"))
    data = ctx.get("data") or {}
    if not data.get("training", True):
        p.append(("spec.data.training", f"required by candidate '{ctx.get('candidate')}' pass {ctx.get('index', 0)} "
                                        "(quantize mode qat)"))
    if c.calibration is not None and c.calibration.method != "minmax":
        p.append(("calibration.method", "qat trains through MinMax ranges (what it simulates is what ONNX Runtime "
                                        f"then calibrates); {c.calibration.method} is not supported with mode qat"))
    return p


def cpu_has_vnni() -> bool:
    """AVX-512 VNNI, AVX-VNNI or AMX: int8 dot products without the int16 intermediate."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


