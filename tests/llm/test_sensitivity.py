"""The sensitivity ranking's one-session switch (worker/llm/sensitivity.py): every MatMul becomes an If between its
FP32 and INT4 forms on a boolean input, so the ablation's tries are forward passes, not rebuilds."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from lathe.worker.fallback import rank_by_removal
from lathe.worker.llm.matmulnbits import mlas_quantize
from lathe.worker.llm.sensitivity import switched

K = 64


def _model():
    rng = np.random.default_rng(8)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, K])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, K])
    inits = [numpy_helper.from_array(rng.normal(size=(K, K)).astype(np.float32), f"w{i}") for i in range(2)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="/a/MatMul"),
             helper.make_node("MatMul", ["h", "w1"], ["z"], name="/b/MatMul")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [z], inits),
                             opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_each_flag_switches_one_matmul_between_fp32_and_int4():
    x = np.random.default_rng(9).normal(size=(1, 2, K)).astype(np.float32)
    fp32 = _run(_model(), {"x": x})
    int4 = _run(mlas_quantize(_model(), ["/a/MatMul", "/b/MatMul"], 4, 32, True, 4), {"x": x})
    model, flags = switched(_model(), ["/a/MatMul", "/b/MatMul"])
    assert set(flags) == {"/a/MatMul", "/b/MatMul"}

    def run(fp32_nodes):
        return _run(model, {"x": x, **{f: np.array(n in fp32_nodes) for n, f in flags.items()}})

    assert np.allclose(run({"/a/MatMul", "/b/MatMul"}), fp32, atol=1e-4)
    assert np.allclose(run(set()), int4, atol=1e-4)
    half = run({"/a/MatMul"})
    assert not np.allclose(half, fp32, atol=1e-3) and not np.allclose(half, int4, atol=1e-3)


def test_ranking_measures_every_node_within_budget_and_groups_beyond():
    costs = {f"n{i}": float(i) for i in range(10)}
    calls = []

    def removed(names):
        calls.append(list(names))
        return sum(costs[n] for n in names)

    ranked = rank_by_removal(list(costs), removed, budget=40)
    assert [n for n, _ in ranked] == [f"n{i}" for i in range(9, -1, -1)] and len(calls) == 10
    calls.clear()
    ranked = rank_by_removal(list(costs), removed, budget=6)
    assert len(calls) <= 6 and ranked[0][0] == "n9"  # groups first, then the worst group's members alone
