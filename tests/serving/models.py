"""Small real models for serving tests: an MLP trained on sklearn digits, exported to ONNX by hand
(no torch import: keeps tests lean), and its dynamic-INT8 twin from onnxruntime.quantization."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return x, d.target.astype(np.int64)


def train_mlp(hidden: int = 64, seed: int = 0):
    import warnings

    from sklearn.neural_network import MLPClassifier

    x, y = digits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=200, random_state=seed).fit(x[:1400], y[:1400])
    return clf, x, y


def mlp_to_onnx(clf, path: str | Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W1"], ["h0"]), helper.make_node("Add", ["h0", "B1"], ["h1"]),
         helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "W2"], ["l0"]),
         helper.make_node("Add", ["l0", "B2"], ["logits"])],
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))
    return path


def quantize(src: str | Path, dst: str | Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


def build(dirpath: str | Path, hidden: int = 64) -> dict:
    """fp32 + int8 ONNX models of a trained digits MLP, and test data."""
    d = Path(dirpath)
    clf, x, y = train_mlp(hidden)
    fp32 = mlp_to_onnx(clf, d / "digits_fp32.onnx")
    int8 = quantize(fp32, d / "digits_int8.onnx")
    return {"fp32": fp32, "int8": int8, "x": x[1400:], "y": y[1400:]}
