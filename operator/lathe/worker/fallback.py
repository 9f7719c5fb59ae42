"""Automatic mixed precision: rank the quantized nodes by how much output error each one costs, so
the worst can be kept in float step by step until the candidate meets the budget.

`ablation` (what the fallback uses): each node, or each group of nodes when there are many, is put
back in float in the quantized Q/DQ graph (its inputs rewired past their DequantizeLinear to the float
tensor or the float model's initializer) and the model output's error against the float model is
measured on a small probe set; a node's score is the error it removes. That sees what a node costs at
the output, which a local figure cannot: NNCF's accuracy control and ModelOpt's sensitivity analysis
rank the same way. The cost is bounded: at most `budget` probe runs (groups first, then the members
of the worst groups one by one).

`sensitivity` (local, one run of each model): a node's output error minus the largest error of its
inputs. Cheap, but on deep depthwise-separable CNNs it ranks every node near 0 (each adds little
locally while the errors compound), so it is kept for the report's comparison only."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from .data import Dataset

log = logging.getLogger("lathe.worker.fallback")
_FUSED_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid"}


def _expose(path: Path, tensors: list[str], dst: Path) -> list[str]:
    import onnx  # noqa: PLC0415

    m = onnx.load(str(path))
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:
        inferred = m
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    present = {o for n in m.graph.node for o in n.output}
    have = {o.name for o in m.graph.output}
    added = []
    for t in tensors:
        if t in present and t not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, types.get(t, onnx.TensorProto.FLOAT), None))
            added.append(t)
        elif t in have:
            added.append(t)
    onnx.save(m, str(dst))
    return added


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


def sensitivity(float_path: Path, quant_path: Path, nodes: list[str], data: Dataset, threads: int = 0,
                samples: int = 16) -> list[tuple[str, float]]:
    """(node, added relative error) for the quantizable nodes, worst first."""
    import onnx  # noqa: PLC0415

    g = onnx.load(str(float_path), load_external_data=False).graph
    by_name = {n.name: n for n in g.node}
    nodes = [n for n in nodes if n in by_name]
    producer_out = {n: by_name[n].output[0] for n in nodes}
    # ONNX Runtime's QDQ quantizer fuses an activation into the node before it (Conv+Relu): the
    # quantized graph has no tensor of the Conv's own output, only the activation's. Compare there.
    consumers: dict[str, list] = {}
    for node in g.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    fused_out = {}
    for n, out in producer_out.items():
        after = consumers.get(out, [])
        if len(after) == 1 and after[0].op_type in _FUSED_ACTIVATIONS:
            fused_out[n] = after[0].output[0]
    data_in = {n: [i for i in by_name[n].input[:1]] for n in nodes}
    tensors = list(dict.fromkeys(list(producer_out.values()) + list(fused_out.values())
                                 + [t for v in data_in.values() for t in v]))
    sub = data.head(samples)
    with tempfile.TemporaryDirectory(prefix="lathe-sens-") as tmp:
        f_names = _expose(float_path, tensors, Path(tmp) / "f.onnx")
        q_names = _expose(quant_path, tensors, Path(tmp) / "q.onnx")
        common = [t for t in f_names if t in q_names]
        f = _run(Path(tmp) / "f.onnx", sub, common, threads)
        q = _run(Path(tmp) / "q.onnx", sub, common, threads)
    err = {}
    for t in common:
        a, b = f[t].astype(np.float64), q[t].astype(np.float64)
        if a.shape != b.shape:
            continue
        err[t] = float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12))
    scores = []
    for n in nodes:
        out = producer_out[n]
        if out not in err:
            out = fused_out.get(n, out)
        if out not in err:
            continue
        inherited = max((err.get(t, 0.0) for t in data_in[n]), default=0.0)
        scores.append((n, max(err[out] - inherited, 0.0) + 1e-9 * err[out]))
    scores.sort(key=lambda x: -x[1])
    return scores


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
    scores: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lathe-ablate-") as tmp:
        def removed(names: list[str]) -> float:
            path = Path(tmp) / "a.onnx"
            onnx.save(_bypass(qmodel, fmodel, set(names)), str(path))
            return full - _output_error(path, sub, ref, out, threads)

        if len(nodes) <= budget:
            for n in nodes:
                scores[n] = removed([n])
        else:  # contiguous groups (graph order) first, then the worst groups' members one by one
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
    log.info("ablation: %d node(s), full-quantization output error %.4g", len(nodes), full)
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
