"""The float-offset grid (worker/llm/quantize.py `_float_offset`): MatMulNBits holds each block's codes and scale,
the block minimum runs beside it as block sums of the input times the offsets. Weights already on a 16-level grid
per block of 32 (what a Q4_1 GGUF holds) come out exactly; an integer zero point cannot hold them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from lathe.worker.llm.matmulnbits import mlas_quantize
from lathe.worker.llm.quantize import _float_offset

K, N, B = 96, 40, 32


def _graph(w: np.ndarray):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, N])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="/mm/MatMul")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(w, "w")]),
                             opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_weights_on_a_q4_1_grid_come_out_exactly():
    rng = np.random.default_rng(3)
    mins = rng.normal(size=(K // B, 1, N)) * 0.1
    steps = rng.random(size=(K // B, 1, N)) * 0.02 + 0.001
    codes = rng.integers(0, 16, size=(K // B, B, N))
    codes[:, 0], codes[:, 1] = 0, 15  # Q4_1 takes the block's minimum and maximum as its ends
    w = (mins + steps * codes).reshape(K, N).astype(np.float32)
    x = rng.normal(size=(1, 3, K)).astype(np.float32)
    ref = x @ w
    exact = _run(_float_offset(_graph(w), ["/mm/MatMul"], 4, B, level=1), x)
    assert np.abs(exact - ref).max() < 1e-5 * np.abs(ref).max()
    integer = _run(mlas_quantize(_graph(w), ["/mm/MatMul"], 4, B, False, 1), x)  # asymmetric, integer zero point
    assert np.abs(integer - ref).max() > 100 * np.abs(exact - ref).max()
    fast = _run(_float_offset(_graph(w), ["/mm/MatMul"], 4, B, level=4), x)  # INT8 activations in the kernel
    assert np.abs(fast - ref).max() < 2e-2 * np.abs(ref).max()


def test_any_weights_get_the_min_max_grid():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(K, N)).astype(np.float32)
    x = rng.normal(size=(1, 3, K)).astype(np.float32)
    b = w.reshape(K // B, B, N).astype(np.float64)
    lo, hi = b.min(1, keepdims=True), b.max(1, keepdims=True)
    s = (hi - lo) / 15
    grid = (lo + s * np.round((b - lo) / s)).reshape(K, N)
    got = _run(_float_offset(_graph(w), ["/mm/MatMul"], 4, B, level=1), x)
    assert np.abs(got - x @ grid).max() < 1e-4 * np.abs(x @ grid).max()
    assert np.abs(got - x @ w).max() > 1e-3 * np.abs(x @ w).max()  # it is 4 bits, not the float weights


def test_a_weight_shared_with_another_node_is_kept():
    """SmolLM2 ties lm_head to the embedding: the FP32 graph feeds lm_head's weight to a Transpose too."""
    rng = np.random.default_rng(5)
    model = _graph(rng.normal(size=(K, N)).astype(np.float32))
    model.graph.node.append(helper.make_node("Transpose", ["w"], ["wt"], name="/embed/Transpose"))
    model.graph.output.append(helper.make_tensor_value_info("wt", TensorProto.FLOAT, [N, K]))
    out = _float_offset(model, ["/mm/MatMul"], 4, B, level=4)
    assert "w" in {i.name for i in out.graph.initializer}
    ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])  # loads


def test_the_mlas_pass_quantizes_only_the_nodes_it_is_given():
    """ONNX Runtime's nodes_to_include adds to the op types it quantizes instead of restricting them: the INT8
    nodes of a mixed candidate were silently INT4 before every other MatMul was excluded explicitly."""
    rng = np.random.default_rng(6)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, K])
    y = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, N])
    inits = [numpy_helper.from_array(rng.normal(size=(K, K)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(K, N)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="/a/MatMul"),
             helper.make_node("MatMul", ["h", "w2"], ["z"], name="/b/MatMul")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    out = mlas_quantize(model, ["/b/MatMul"], 8, B, True, 4)
    assert [(n.op_type, n.name) for n in out.graph.node] == [("MatMul", "/a/MatMul"), ("MatMulNBits", "/b/MatMul_Q8")]


def test_hqq_float_zero_points_are_hoisted_out_of_the_kernel():
    """HQQ's MatMulNBits keeps float zero points (ONNX Runtime's CPU kernels: about 200x slower); hoisted, the
    kernel gets the default integer zero point and the graph computes the same product."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    from lathe.worker.llm.quantize import hoist_zero_points

    rng = np.random.default_rng(7)
    w = rng.normal(size=(K, N)).astype(np.float32)
    x = rng.normal(size=(1, 3, K)).astype(np.float32)
    q = mq.MatMulNBitsQuantizer(_graph(w), bits=4, block_size=B, accuracy_level=1,
                                algo_config=mq.HQQWeightOnlyQuantConfig(block_size=B, bits=4))
    q.process()
    hqq = q.model.model
    zp_types = {i.name: i.data_type for i in hqq.graph.initializer}
    node = next(n for n in hqq.graph.node if n.op_type == "MatMulNBits")
    assert zp_types[node.input[3]] == TensorProto.FLOAT  # what makes the kernel slow
    native = _run(hqq, x)
    hoisted = hoist_zero_points(hqq, level=1)
    node = next(n for n in hoisted.graph.node if n.op_type == "MatMulNBits")
    assert len(node.input) == 3  # no zero point input left
    assert np.abs(_run(hoisted, x) - native).max() < 1e-4 * np.abs(native).max()
