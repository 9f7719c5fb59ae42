"""Which MatMuls cost the most at INT4: an ablation at the model's output, like worker/fallback.py's.

The whole graph is quantized to INT4 (round to nearest); then each MatMul, or each contiguous group of them when
there are many (fallback.rank_by_removal), is put back to FP32 in turn and the error removed at the logits is its
score. The error is the mean KL divergence of the next-token distribution from the FP32 model's, over one window
of calibration text. All the tries run in ONE ONNX Runtime session: every MatMul becomes an `If` on a boolean
input whose branches are the FP32 MatMul and the INT4 MatMulNBits, so a try is one forward pass, not a rebuild."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .matmulnbits import mlas_quantize

log = logging.getLogger("lathe.worker.llm.sensitivity")

BUDGET = 40        # forward passes (fallback.rank_by_removal's budget)
PROBE_TOKENS = 128


def switched(fp32_model, nodes: list[str], block: int = 32):
    """A copy of the FP32 graph in which each of `nodes` is If(<flag>, FP32 MatMul, INT4 MatMulNBits)."""
    import copy  # noqa: PLC0415

    from onnx import TensorProto, helper  # noqa: PLC0415


    q = mlas_quantize(copy.deepcopy(fp32_model), nodes, 4, block, True, 4)
    fnodes = {n.name: n for n in fp32_model.graph.node}
    have = {i.name for i in q.graph.initializer}
    for i in fp32_model.graph.initializer:  # the FP32 weights, for the FP32 branches
        if i.name not in have:
            q.graph.initializer.append(i)
    flags = {}
    out_nodes = []
    for node in q.graph.node:
        orig = node.name[: -len("_Q4")] if node.name.endswith("_Q4") else None
        if node.op_type != "MatMulNBits" or orig not in fnodes or orig not in nodes:
            out_nodes.append(node)
            continue
        f = fnodes[orig]
        flag = f"lathe_fp32_{len(flags)}"
        flags[orig] = flag
        y = node.output[0]
        then_g = helper.make_graph([helper.make_node("MatMul", [f.input[0], f.input[1]], [f"{y}_f"])], f"{flag}_f",
                                   [], [helper.make_tensor_value_info(f"{y}_f", TensorProto.FLOAT, None)])
        qn = copy.deepcopy(node)
        qn.output[0] = f"{y}_q"
        else_g = helper.make_graph([qn], f"{flag}_q", [], [helper.make_tensor_value_info(f"{y}_q", TensorProto.FLOAT, None)])
        out_nodes.append(helper.make_node("If", [flag], [y], name=f"{orig}/lathe_if", then_branch=then_g,
                                          else_branch=else_g))
        q.graph.input.append(helper.make_tensor_value_info(flag, TensorProto.BOOL, []))
    del q.graph.node[:]
    q.graph.node.extend(out_nodes)
    return q, flags


def rank(fp32_dir: Path, ctx, nodes: list[str], threads: int = 0, budget: int = BUDGET,
         block: int = 32) -> list[tuple[str, float]]:
    """(MatMul, KL removed by keeping it out of INT4), worst first."""
    import tempfile  # noqa: PLC0415

    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    from ..fallback import rank_by_removal  # noqa: PLC0415
    from .metrics import Scorer, log_softmax  # noqa: PLC0415

    fp32 = Scorer(fp32_dir, threads)
    ids = ctx.calibration.windows[0][None, :PROBE_TOKENS]
    ref = log_softmax(fp32.run(ids)[0])
    feeds = fp32.feeds(ids)
    del fp32
    model, flags = switched(onnx.load(str(fp32_dir / "model.onnx")), nodes, block)
    with tempfile.TemporaryDirectory(prefix="lathe-sensitivity-") as tmp:
        path = Path(tmp) / "switched.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="switched.onnx.data")
        del model
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def kl(fp32_nodes: set[str]) -> float:
        f = dict(feeds)
        for n, flag in flags.items():
            f[flag] = np.array(n in fp32_nodes)
        lp = log_softmax(sess.run(["logits"], f)[0][0])
        return float((np.exp(ref) * (ref - lp)).sum(-1).mean())

    full = kl(set())
    ranked = rank_by_removal([n for n in nodes if n in flags], lambda names: full - kl(set(names)), budget)
    log.info("sensitivity: %d MatMul(s), INT4 KL %.4g, worst %s", len(flags), full, ranked[:3])
    return ranked
