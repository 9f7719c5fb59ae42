"""GPTQ (worker/llm/gptq.py) on a synthetic layer with correlated inputs: it must beat round to nearest on the
same grid at the layer's output, keep every code on the grid it reports, and (why it is written here) ONNX
Runtime 1.32's vendored GPTQ step returns round to nearest exactly."""

from __future__ import annotations

import numpy as np
import pytest

from lathe.worker.llm.gptq import _grid, dequantize, gptq_codes

K, N, G = 256, 48, 32


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(K, N)).astype(np.float32)
    x = rng.normal(size=(1500, K)) @ rng.normal(size=(K, K)) * 0.1  # correlated input features
    return w, x, 2 * x.T @ x / len(x)


def _rtn(w: np.ndarray, symmetric: bool) -> np.ndarray:
    out = np.zeros(w.shape)
    for g in range(0, K, G):
        s, z = _grid(w[g:g + G].astype(np.float64), 4, symmetric)
        out[g:g + G] = s * (np.clip(np.round(w[g:g + G] / s) + z, 0, 15) - z)
    return out


def _err(x, w, wq) -> float:
    return float(np.linalg.norm(x @ (w - wq)) / np.linalg.norm(x @ w))


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_beats_round_to_nearest_at_the_output(layer, symmetric):
    w, x, h = layer
    codes, scales, zeros = gptq_codes(w, h, 4, G, symmetric)
    assert codes.dtype == np.uint8 and codes.max() <= 15 and scales.shape == (K // G, N)
    if symmetric:
        assert (zeros == 8).all()
    ours, rtn = _err(x, w, dequantize(codes, scales, zeros, G)), _err(x, w, _rtn(w, symmetric))
    assert ours < 0.8 * rtn, (ours, rtn)


def test_onnxruntime_s_vendored_gptq_step_is_round_to_nearest(layer):
    from onnxruntime.quantization.neural_compressor.weight_only import gptq

    w, x, h = layer
    theirs = gptq(w.copy(), h.copy(), num_bits=4, group_size=G, scheme="sym", blocksize=128, percdamp=0.01)
    assert np.allclose(theirs, _rtn(w, True), atol=1e-6)
    codes, scales, zeros = gptq_codes(w, h, 4, G, True)
    assert not np.allclose(dequantize(codes, scales, zeros, G), _rtn(w, True), atol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_matmulnbits_computes_with_the_codes_gptq_chose(symmetric):
    """Packed the way the weight-only pass packs them (3 blocks per row: an odd count of zero points), ONNX
    Runtime's MatMulNBits multiplies by exactly the dequantized GPTQ weights."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.neural_compressor.weight_only import make_matmul_weight_only_node

    from lathe.worker.llm.quantize import _pack_zero_points

    rng = np.random.default_rng(1)
    k, n, g = 96, 40, 32
    w = rng.normal(size=(k, n)).astype(np.float32)
    x = rng.normal(size=(5, k)).astype(np.float32)
    codes, scales, zeros = gptq_codes(w, 2 * x.T @ x / 5 + np.eye(k), 4, g, symmetric)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    q, inits = make_matmul_weight_only_node(node=node, weight_shape=w.shape, num_bits=4, group_size=g,
                                            k_blocks=k // g, q_weight=np.ascontiguousarray(codes.T).reshape(-1, g),
                                            scale=np.ascontiguousarray(scales.T.astype(np.float32)),
                                            zero_point=None, accuracy_level=1)
    if not symmetric:
        inits.append(numpy_helper.from_array(_pack_zero_points(zeros.T.astype(np.uint8), 4), "w_zp"))
        q.input.append("w_zp")
    graph = helper.make_graph([q], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = x @ dequantize(codes, scales, zeros, g)
    assert np.abs(y - ref).max() < 1e-4 * np.abs(ref).max()
