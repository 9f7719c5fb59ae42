"""MatMulNBits' defaults and ONNX Runtime's own (MLAS) blockwise quantizer: below the weight-only pass
(passes/weight_only.py), the quantize step (quantize.py) and the sensitivity ranking (sensitivity.py), which all
use them. Light at import: ONNX Runtime is loaded when a model is quantized."""

from __future__ import annotations

DEFAULT_BLOCK = 32
DEFAULT_ACCURACY_LEVEL = 4  # INT8 activations: MLAS' fast VNNI path on this CPU
CALIBRATION_WINDOWS = 8  # gptq/awq: windows of calibration text used unless calibration.samples says


def mlas_quantize(model, nodes: list[str], bits: int, block: int, symmetric: bool, level: int):
    """ONNX Runtime's default (MLAS) blockwise quantizer: what the model builder runs for rtn."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mq  # noqa: PLC0415

    cfg = mq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, accuracy_level=level, bits=bits)
    # nodes_to_include adds to the op types quantized, it does not restrict them: every other MatMul is excluded
    wanted = set(nodes)
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in wanted]
    q = mq.MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=symmetric, accuracy_level=level,
                                nodes_to_exclude=others, algo_config=cfg)
    q.process()
    return q.model.model
