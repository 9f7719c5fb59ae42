"""The fallback's ranking by ablation (worker/fallback.py): each quantized node put back in float in the
real Q/DQ graph ONNX Runtime's quantizer made, its effect measured at the model's output.

The model: a six-layer MLP whose fourth layer has one weight 100x the others, so per-tensor INT8
quantization crushes the rest of that layer to zero: that node is known to dominate the error. Ablation
ranks it first by far, putting it back in float removes nearly all the output error, and the bounded
(grouped) search finds it too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lathe.worker.data import Dataset
from lathe.worker.fallback import _bypass, _output_error, _run, ablation


def _mlp(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = [rng.normal(0, 0.2, (64, 64)).astype(np.float32) for _ in range(5)] + [
        rng.normal(0, 0.2, (64, 10)).astype(np.float32)]
    w[3][3, 5] = 20.0  # the outlier: a per-tensor scale 100x too coarse for every other weight of fc4
    inits, nodes, x = [], [], "x"
    for i, wi in enumerate(w, start=1):
        inits += [numpy_helper.from_array(wi, f"w{i}"), numpy_helper.from_array(np.zeros(wi.shape[1], np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"], name=f"fc{i}"))
        x = f"h{i}"
        if i < len(w):
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def _quantize(src: Path, dst: Path, data: Dataset) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data.batches(8))

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=False,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return dst


def test_ablation_finds_the_node_that_dominates_the_error(tmp_path):
    x = np.abs(np.random.default_rng(1).normal(0, 1, (64, 64))).astype(np.float32)
    data = Dataset(tmp_path / "cal.npz", {"x": x})
    fp32 = _mlp(tmp_path / "mlp.onnx")
    int8 = _quantize(fp32, tmp_path / "mlp_int8.onnx", data)
    assert {n.op_type for n in onnx.load(str(int8)).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}

    nodes = [f"fc{i}" for i in range(1, 7)]
    ranked = ablation(fp32, int8, nodes, data)
    (first, s1), (_, s2) = ranked[0], ranked[1]
    assert first == "fc4" and s1 > 10 * max(s2, 1e-9), ranked

    # Putting fc4 back in float is real: the output error (vs FP32) mostly goes away.
    sub = data.head(16)
    ref = _run(fp32, sub, ["h6"], 0)["h6"].astype(np.float64)
    full = _output_error(int8, sub, ref, "h6", 0)
    fixed = tmp_path / "fc4_float.onnx"
    onnx.save(_bypass(onnx.load(str(int8)), onnx.load(str(fp32)), {"fc4"}), str(fixed))
    assert _output_error(fixed, sub, ref, "h6", 0) < 0.25 * full, full  # 0.216 -> 0.046 here

    # With fewer probe runs than nodes (5 for 6) it ablates two groups of three, then the worse
    # group's members one by one: fc4 still comes first, every node is ranked.
    bounded = ablation(fp32, int8, nodes, data, budget=5)
    assert bounded[0][0] == "fc4" and sorted(n for n, _ in bounded) == nodes, bounded
