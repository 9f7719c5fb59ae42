"""Automatic mixed precision: rank the quantized nodes by how much output error each one adds, so
the worst can be kept in float step by step until the candidate meets the budget.

One run of the float model and one of the quantized model on a few calibration samples, with the
output of every quantizable node exposed: a node's contribution is the relative error of its output
minus the largest relative error of its inputs (the error it adds, not the error it inherits)."""

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
