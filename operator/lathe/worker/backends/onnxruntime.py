"""ONNX Runtime on CPU: the artifact is the ONNX file itself; sessions use full graph
optimisation (SESSION_LEVEL), a fixed intra-op thread count and sequential execution. The precision
audit classifies the graph those same sessions run: ONNX Runtime's own optimised graph at
SESSION_LEVEL, which at `all` holds the layout-specific kernels (NCHWc convolutions, NHWC
QLinearConv with the transposes around it) that `extended` does not."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .base import Artifact, Backend, Runner, register_backend

INT8_OPS = {"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul",
            "MatMulIntegerToFloat", "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
            "QLinearAveragePool", "QAttention", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
            "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearSoftmax", "QLinearReduceMean"}
INT4_OPS = {"MatMulNBits"}
# Ops that move or select values without computing new ones: they run in the precision of the tensor they
# are given (a Transpose of a uint8 tensor before an NHWC QLinearConv is INT8 work, not FP32).
MOVE_OPS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat", "Slice", "Split",
            "MaxPool", "NhwcMaxPool", "ReorderInput", "ReorderOutput", "Gather", "Expand", "Pad"}
# What every timed, validated and audited session of a candidate runs at.
SESSION_LEVEL = "all"


def session(path: Path | str, threads: int = 0, optimized_path: str | None = None, level: str = SESSION_LEVEL):
    import onnxruntime as ort  # noqa: PLC0415

    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@register_backend
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    @classmethod
    def available(cls) -> str | None:
        try:
            import onnxruntime  # noqa: F401, PLC0415
        except ImportError:
            return "onnxruntime is not installed"
        return None

    def build(self, onnx_path: Path, outdir: Path, options: dict[str, Any]) -> Artifact:
        import onnx  # noqa: PLC0415

        outdir.mkdir(parents=True, exist_ok=True)
        dst = outdir / "model.onnx"
        m = onnx.load(str(onnx_path))
        if m.ByteSize() > 1_800_000_000:
            onnx.save(m, str(dst), save_as_external_data=True, location="model.onnx.data")
            files = [dst, outdir / "model.onnx.data"]
        else:
            if Path(onnx_path).resolve() != dst.resolve():
                shutil.copyfile(onnx_path, dst)
            files = [dst]
        import onnxruntime as ort  # noqa: PLC0415

        return Artifact(runtime=self.name, files=files, meta={"onnxruntime": ort.__version__})

    def load(self, artifact: Artifact, threads: int) -> Runner:
        sess = session(artifact.path, threads)
        names = [i.name for i in sess.get_inputs()]

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return sess.run(None, {k: feeds[k] for k in names})

        run.session = sess  # type: ignore[attr-defined]
        return run

    def precision(self, artifact: Artifact) -> dict[str, str]:
        """Precision of every node as ONNX Runtime runs it: the graph a session of `load` runs (the same
        optimisation level, SESSION_LEVEL), as that session saves it."""
        import onnx  # noqa: PLC0415

        with tempfile.TemporaryDirectory(prefix="lathe-prec-") as tmp:
            opt = os.path.join(tmp, "optimized.onnx")
            session(artifact.path, 1, optimized_path=opt)
            m = onnx.load(opt, load_external_data=False)
        return classify(m)


def _quantized_output(n) -> bool:
    """Does this node write an 8-bit quantized tensor (not float, not an int32 accumulator)?"""
    if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") or n.op_type.startswith("QLinear"):
        return True
    return n.op_type == "QGemm" and len(n.input) > 8 and bool(n.input[8])  # with y_zero_point: quantized output


def classify(m) -> dict[str, str]:
    fp16 = set()
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        if vi.type.tensor_type.elem_type == 10:
            fp16.add(vi.name)
    dq_out = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized: set[str] = set()  # 8-bit tensors, followed through the ops that only move them (saved in order)
    out: dict[str, str] = {}
    for i, n in enumerate(m.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        moves_int8 = n.op_type in MOVE_OPS and bool(n.input) and n.input[0] in quantized
        if _quantized_output(n) or moves_int8:
            quantized.update(n.output[:1])
        if n.op_type in INT4_OPS:
            out[name] = "INT4"
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast"):
            out[name] = "CONVERT"
        elif n.op_type in INT8_OPS or moves_int8:
            out[name] = "INT8"
        elif any(i in dq_out for i in n.input):
            out[name] = "INT8-QDQ"  # float op fed by dequantized tensors that the runtime did not fuse
        elif any(o in fp16 for o in n.output):
            out[name] = "FP16"
        else:
            out[name] = "FP32"
    return out


def precision_counts(prec: dict[str, str]) -> dict[str, int]:
    return dict(Counter(prec.values()))
