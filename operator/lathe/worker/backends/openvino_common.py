"""What the OpenVINO backend and the NNCF quantize pass both need, without importing OpenVINO: the shapes a
spec pins (the backend reshapes to them) and whether an ONNX graph looks like a transformer (the pass warns
when modelType is unset). Below both, so that a backend never imports a pass."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def pinned_shapes(spec) -> dict[str, list]:
    """{input: dims} from spec.model.inputs when the spec pins at least one dim to an int (the OpenVINO
    model is then reshaped: ints fixed, named dims left dynamic); {} otherwise."""
    inputs = getattr(getattr(spec, "model", None), "inputs", None) or []
    out: dict[str, list] = {}
    for i in inputs:
        if i.shape and any(isinstance(d, int) and d > 0 for d in i.shape):
            out[i.name] = [d if isinstance(d, int) and d > 0 else -1 for d in i.shape]
    if out:
        batch_sizes = list(getattr(getattr(spec, "target", None), "batch_sizes", None) or [1])
        for dims in out.values():  # a pinned batch dim that the benchmark cannot feed: keep it dynamic
            if dims and dims[0] > 0 and any(b != dims[0] for b in batch_sizes):
                dims[0] = -1
    return out


def detect_transformer_onnx(path: str | Path) -> list[str]:
    """The same question on an ONNX file (cheap: no OpenVINO import): LayerNormalization or the decomposed
    ReduceMean/Pow/Sqrt pattern, and attention (Softmax after a MatMul of two activations)."""
    import onnx  # noqa: PLC0415

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    consts = {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    types = Counter(n.op_type for n in m.graph.node)
    reasons: list[str] = []
    act_mm = sum(1 for n in m.graph.node if n.op_type == "MatMul"
                 and not any(i in inits or i in consts for i in n.input[:2]))
    if types.get("Softmax") and act_mm:
        reasons.append(f"Softmax with {act_mm} activation x activation MatMul(s) (attention)")
    if types.get("Attention") or types.get("MultiHeadAttention"):
        reasons.append("fused attention op")
    ln = types.get("LayerNormalization", 0) + types.get("SkipLayerNormalization", 0)
    if not ln and types.get("ReduceMean") and types.get("Sqrt") and types.get("Pow"):
        ln = min(types["ReduceMean"] // 2, types["Sqrt"])
    if reasons and ln:
        reasons.append(f"{ln} layer normalisation(s)")
    return reasons
