"""Automatic mixed precision: rank the quantized nodes by how much output error each one costs, so
the worst can be kept in float step by step until the candidate meets the budget.

`ablation` (what the fallback uses): each node, or each group of nodes when there are many, is put
back in float in the quantized Q/DQ graph (its inputs rewired past their DequantizeLinear to the float
tensor or the float model's initializer) and the model output's error against the float model is
measured on a small probe set; a node's score is the error it removes. That sees what a node costs at
the output, which a local figure cannot: NNCF's accuracy control and ModelOpt's sensitivity analysis
rank the same way. The cost is bounded: at most `budget` probe runs (groups first, then the members
of the worst groups one by one). It replaced a local score (a node's output error minus its inputs'),
which ranked every node of a deep depthwise-separable CNN near 0: each adds little locally while the
errors compound."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from .data import Dataset

log = logging.getLogger("lathe.worker.fallback")
_FUSED_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid"}


def _run(path: Path, data: Dataset, names: list[str], threads: int) -> dict[str, np.ndarray]:
    from .backends.onnxruntime import session  # noqa: PLC0415

    sess = session(path, threads, level="basic")
    inputs = [i.name for i in sess.get_inputs()]
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feeds in data.batches(8):
        res = sess.run(names, {k: feeds[k] for k in inputs})
        for n, r in zip(names, res, strict=True):
            outs[n].append(np.asarray(r, dtype=np.float32))
    return {n: np.concatenate(v) for n, v in outs.items()}


def _bypass(qmodel, fmodel, names: set[str]):
    """A copy of the Q/DQ model with `names` in float: each input fed by a DequantizeLinear is rewired
    to the float tensor before its QuantizeLinear, or to the float model's initializer (weights, bias)."""
    import copy

    import onnx  # noqa: PLC0415

    m = copy.deepcopy(qmodel)
    producer = {o: n for n in m.graph.node for o in n.output}
    f_nodes = {n.name: n for n in fmodel.graph.node}
    f_producer = {o: n for n in fmodel.graph.node for o in n.output}
    f_inits = {i.name: i for i in fmodel.graph.initializer}
    have = {i.name for i in m.graph.initializer}
    q_names = {n.name for n in m.graph.node}
    added = []
    for node in m.graph.node:
        if node.name not in names or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        fnode = f_nodes.get(node.name)
        for i, t in enumerate(node.input):
            dq = producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            ft = fnode.input[i] if fnode is not None and i < len(fnode.input) else None
            if q is not None and q.op_type == "QuantizeLinear":
                src = q.input[0]  # an activation: the float tensor the quantizer saw
                act = f_producer.get(ft)
                if act is not None and act.op_type in _FUSED_ACTIVATIONS and act.name not in q_names:
                    # The quantizer dropped this Relu/Clip (the Q range clips the same): in float it is needed.
                    redo = onnx.NodeProto()
                    redo.CopyFrom(act)
                    redo.name, redo.input[0], redo.output[0] = f"{act.name}__lathe_float", src, f"{src}__lathe_act"
                    if redo.name not in q_names:
                        added.append(redo)
                        q_names.add(redo.name)
                    src = redo.output[0]
                node.input[i] = src
                continue
            if ft in f_inits:  # a quantized weight or bias: the float model's own
                name = f"{ft}__lathe_float"
                if name not in have:
                    init = onnx.TensorProto()
                    init.CopyFrom(f_inits[ft])
                    init.name = name
                    m.graph.initializer.append(init)
                    have.add(name)
                node.input[i] = name
    if added:  # keep the graph topologically sorted: each re-made activation right before its first user
        nodes = list(m.graph.node)
        for redo in added:
            first = next(k for k, n in enumerate(nodes) if redo.output[0] in n.input)
            nodes.insert(first, redo)
        del m.graph.node[:]
        m.graph.node.extend(nodes)
    return m


def _output_error(sess_path: Path, data: Dataset, ref: np.ndarray, out: str, threads: int) -> float:
    got = _run(sess_path, data, [out], threads)[out].astype(np.float64)
    return float(np.linalg.norm(got - ref) / (np.linalg.norm(ref) + 1e-12))


def ablation(float_path: Path, quant_path: Path, nodes: list[str], data: Dataset, threads: int = 0,
             samples: int = 16, budget: int = 48, output: str | None = None) -> list[tuple[str, float]]:
    """(node, output error removed by putting it back in float), worst first; at most `budget` probe runs."""
    import onnx  # noqa: PLC0415

    fmodel = onnx.load(str(float_path))
    qmodel = onnx.load(str(quant_path))
    in_q = {n.name for n in qmodel.graph.node}
    nodes = [n for n in nodes if n in in_q]
    out = output or fmodel.graph.output[0].name
    sub = data.head(samples)
    ref = _run(float_path, sub, [out], threads)[out].astype(np.float64)
    full = _output_error(quant_path, sub, ref, out, threads)
    with tempfile.TemporaryDirectory(prefix="lathe-ablate-") as tmp:
        def removed(names: list[str]) -> float:
            path = Path(tmp) / "a.onnx"
            onnx.save(_bypass(qmodel, fmodel, set(names)), str(path))
            return full - _output_error(path, sub, ref, out, threads)

        ranked = rank_by_removal(nodes, removed, budget)
    log.info("ablation: %d node(s), full-quantization output error %.4g", len(nodes), full)
    return ranked


def rank_by_removal(nodes: list[str], removed, budget: int) -> list[tuple[str, float]]:
    """(node, removed([node])) worst first, in at most `budget` calls of `removed(names) -> error removed when
    these go back to high precision`: every node alone when they fit, else contiguous groups (graph order)
    first and the members of the worst groups one by one. Shared by this Q/DQ fallback and the causal-LM
    MatMulNBits ranking (worker/llm/sensitivity.py)."""
    scores: dict[str, float] = {}
    if len(nodes) <= budget:
        for n in nodes:
            scores[n] = removed([n])
    else:
        size = -(-len(nodes) // (budget // 2))
        groups = [nodes[i:i + size] for i in range(0, len(nodes), size)]
        g_score = {i: removed(g) for i, g in enumerate(groups)}
        left = budget - len(groups)
        for i in sorted(g_score, key=lambda i: -g_score[i]):
            members = groups[i]
            if left >= len(members):
                for n in members:
                    scores[n] = removed([n])
                left -= len(members)
            else:  # not measured alone: ranked by its group, below any measured node of that score
                for n in members:
                    scores[n] = g_score[i] / len(members) - 1e-12
    return sorted(scores.items(), key=lambda x: -x[1])


def steps(max_nodes: int, available: int) -> list[int]:
    """How many nodes to keep in float at each try: 1, 2, 4, … up to max_nodes."""
    limit = min(max_nodes, available)
    out, k = [], 1
    while k < limit:
        out.append(k)
        k *= 2
    if limit > 0:
        out.append(limit)
    return out
