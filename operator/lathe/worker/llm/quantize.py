"""`quantize` on runtime onnxruntime-genai: weight-only INT4/INT8 of the MatMuls (ONNX Runtime's MatMulNBits),
on the model builder's FP32 graph.

Algorithms (passes[].algorithm): rtn (round to nearest, the builder's default), k-quant (the builder's k_quant
search of each block's scale), hqq (half-quadratic, no data), gptq (ONNX Runtime's GPTQ on the calibration text),
awq (NVIDIA ModelOpt's ONNX awq_lite on the calibration text, which falls back to numpy without CUDA; its
DequantizeLinear -> MatMul pairs become MatMulNBits when ONNX Runtime loads the graph). Mixed precision:
int8Nodes names MatMuls kept at 8 bits, int8Sensitive keeps the N that an ablation ranks most sensitive
(sensitivity.py), excludeNodes keeps MatMuls in FP32. The embedding Gather stays FP32 (it reads one row per
token: no decode time to win, and this model ties it to lm_head, which the builder's shared INT4 embedding then
rounds twice).

Every built graph is then loaded by the generation runtime and generates before it is judged
(pipeline.py): a quantizer can write a graph ONNX Runtime refuses, or a slower one (HQQ's float zero points
decoded at a tenth of FP32's speed here): only loading and timing each candidate shows it."""

from __future__ import annotations

import fnmatch
import logging
import shutil
from pathlib import Path

from ...api.spec import CalibrationSettings
from ..errors import InvalidInput, WorkerError
from ..passes.base import ModelState, PassContext
from .export import NOT_MODEL_FILES
from .matmulnbits import CALIBRATION_WINDOWS, DEFAULT_ACCURACY_LEVEL, DEFAULT_BLOCK, mlas_quantize

log = logging.getLogger("lathe.worker.llm.quantize")


def quantize_weights(ps, state: ModelState, ctx: PassContext) -> ModelState:
    """Run the weight-only pass `ps` (passes/weight_only.py) on the FP32 model folder of `state`."""
    import onnx  # noqa: PLC0415

    from ..passes.quantize import quiet_ort_logs  # noqa: PLC0415

    quiet_ort_logs()
    for name in ("onnxruntime.quantization.neural_compressor", "modelopt"):
        logging.getLogger(name).setLevel(logging.WARNING)
    c = ps.config
    src_dir = Path(state.onnx_path).parent
    out = ctx.workdir.parent / "model"
    if out.exists():
        shutil.rmtree(out)
    model = onnx.load(str(state.onnx_path))
    matmuls = weight_matmuls(model)
    exclude = resolve(c.exclude_nodes, matmuls, "excludeNodes")
    int8 = [n for n in resolve(c.int8_nodes, matmuls, "int8Nodes") if n not in exclude]
    if c.int8_sensitive:
        from .sensitivity import rank  # noqa: PLC0415

        ctx.report("sensitivity", 0.0, f"ranking {len(matmuls)} MatMuls")
        ranked = rank(src_dir, ctx, [n for n in matmuls if n not in exclude], threads=ctx.threads)
        state.info["sensitivity"] = ranked[:64]
        int8 += [n for n, _ in ranked if n not in int8][: c.int8_sensitive]
    body = [n for n in matmuls if n not in exclude and n not in int8]
    ctx.report("quantize", 0.1, f"{len(body)} MatMul(s) at {ps.bits} bits ({c.algorithm})"
               + (f", {len(int8)} at 8" if int8 else ""))
    model = _quantize(ps, model, body, ps.bits, str(c.algorithm), ctx, src_dir)
    if int8:
        model = mlas_quantize(model, int8, 8, c.block_size or DEFAULT_BLOCK, c.symmetric is not False,
                      c.accuracy_level if c.accuracy_level is not None else DEFAULT_ACCURACY_LEVEL)
    out.mkdir(parents=True)
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=1024)
    for f in src_dir.iterdir():  # genai_config.json and the tokenizer files
        if f.is_file() and not f.name.startswith("model.onnx") and f.name not in NOT_MODEL_FILES:
            shutil.copy2(f, out / f.name)
    state.onnx_path = out / "model.onnx"
    state.quantized = True
    state.float_nodes = exclude
    state.info["int8_nodes"] = int8
    state.info["bits"] = {**{n: ps.bits for n in body}, **{n: 8 for n in int8}, **{n: 32 for n in exclude}}
    return state


def _quantize(ps, model, nodes: list[str], bits: int, algorithm: str, ctx: PassContext, src_dir: Path):
    c = ps.config
    block = c.block_size or DEFAULT_BLOCK
    level = c.accuracy_level if c.accuracy_level is not None else DEFAULT_ACCURACY_LEVEL
    sym = c.symmetric is not False
    if not nodes:
        return model
    if algorithm == "rtn" and c.float_offset:
        return _float_offset(model, nodes, bits, block, level)
    if algorithm == "rtn":
        return mlas_quantize(model, nodes, bits, block, sym, level)
    from onnxruntime.quantization import matmul_nbits_quantizer as mq  # noqa: PLC0415

    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in nodes]
    if algorithm == "k-quant":
        cfg = mq.KQuantWeightOnlyQuantConfig(customized_weight_config={n: {"bits": bits, "block_size": block}
                                                                       for n in nodes})
        q = mq.MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=sym, accuracy_level=level,
                                    nodes_to_exclude=others, algo_config=cfg)
    elif algorithm == "hqq":
        cfg = mq.HQQWeightOnlyQuantConfig(block_size=block, bits=bits)
        q = mq.MatMulNBitsQuantizer(model, bits=bits, block_size=block, accuracy_level=level,
                                    nodes_to_exclude=others, algo_config=cfg)
        q.process()
        return hoist_zero_points(q.model.model, level) if c.float_offset else q.model.model
    elif algorithm == "gptq":
        return _gptq(model, nodes, bits, block, sym, level, _reader(ctx, src_dir, c.calibration), ctx)
    elif algorithm == "awq":
        return _awq(model, others, block, ctx, src_dir, c.calibration)
    else:
        raise WorkerError("pass:quantize", f"unknown weight algorithm {algorithm}")
    q.process()
    return q.model.model



def _gptq(model, nodes: list[str], bits: int, block: int, symmetric: bool, level: int, reader: _Windows, ctx):
    """GPTQ (gptq.py) with every MatMul's input collected in one forward pass per calibration window: ONNX
    Runtime's own gptq_quantize runs the whole model once per MatMul input per window (121 x 8 forward passes
    here, half an hour on 2 cores) and re-quantizes GPTQ's output on a recomputed grid. Packed into MatMulNBits
    with ONNX Runtime's packer."""
    import numpy as np  # noqa: PLC0415
    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415
    from onnxruntime.quantization.neural_compressor.weight_only import make_matmul_weight_only_node  # noqa: PLC0415

    from .gptq import gptq_codes  # noqa: PLC0415

    byname = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    for n in nodes:
        k = inits[byname[n].input[1]].dims[0]
        if k % block:
            raise InvalidInput("spec", f"quantize blockSize {block}: gptq needs it to divide every MatMul's input "
                                       f"size ({n} has {k})")
    acts = list(dict.fromkeys(byname[n].input[0] for n in nodes))
    have = {o.name for o in model.graph.output}
    extra = [onnx.helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT, None) for a in acts if a not in have]
    model.graph.output.extend(extra)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if ctx.threads:
        so.intra_op_num_threads = ctx.threads
    # from memory: saving with external data would rewrite the model's initializers to point at the saved file
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for _ in extra:
        model.graph.output.pop()
    hess: dict[str, np.ndarray] = {}
    count = 0
    for i, feeds in enumerate(reader.feeds):
        ctx.report("gptq", 0.05 + 0.25 * i / len(reader), f"calibration window {i + 1}/{len(reader)}")
        outs = sess.run(acts, feeds)
        n_tok = 0
        for a, x in zip(acts, outs, strict=True):
            x = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
            n_tok = x.shape[0]
            xtx = (x.T @ x).astype(np.float64)  # float32 BLAS (4x float64's speed), summed in float64
            hess[a] = (hess[a] * (count / (count + n_tok)) if a in hess else 0.0) + xtx * (2 / (count + n_tok))
        count += n_tok
    del sess
    new_nodes, used = [], set()
    for j, node in enumerate(model.graph.node):
        if node.name not in nodes:
            new_nodes.append(node)
            continue
        ctx.report("gptq", 0.3 + 0.7 * j / len(model.graph.node), node.name)
        w = numpy_helper.to_array(inits[node.input[1]])
        codes, scales, zeros = gptq_codes(w, hess[node.input[0]], bits, block, symmetric)
        qnode, new_inits = make_matmul_weight_only_node(
            node=node, weight_shape=w.shape, num_bits=bits, group_size=block, k_blocks=w.shape[0] // block,
            q_weight=np.ascontiguousarray(codes.T).reshape(-1, block),  # one row per (output, block), as it packs
            scale=np.ascontiguousarray(scales.T.astype(np.float32)),
            zero_point=None, accuracy_level=level)
        if not symmetric:  # [N, ceil(blocks * bits / 8)]: MatMulNBits' layout (the packer above mispacks odd counts)
            zp = _pack_zero_points(zeros.T.astype(np.uint8), bits)
            new_inits.append(numpy_helper.from_array(zp, node.input[1] + "_zp"))
            qnode.input.append(node.input[1] + "_zp")
        new_nodes.append(qnode)
        model.graph.initializer.extend(new_inits)
        used.add(node.input[1])
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    still = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name not in used or i.name in still]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model


def _float_offset(model, nodes: list[str], bits: int, block: int, level: int):
    """Min/max grid per block with its offset kept exact: MatMulNBits(x; codes, scales, default zero point
    2^(bits-1)) + blocksum(x) @ offsets, offsets = block minimum + 2^(bits-1) * scale. The effective weight is
    scale * code + minimum: a weight already on a 16-level grid per block (Q4_1 at block 32) is held exactly.
    Inputs shared by several MatMuls (q/k/v fused, gate and up) get one block-sum."""
    import numpy as np  # noqa: PLC0415
    from onnx import helper, numpy_helper  # noqa: PLC0415

    maxq, mid = 2 ** bits - 1, 2 ** (bits - 1)
    inits = {i.name: i for i in model.graph.initializer}
    sums: dict[str, str] = {}
    new_nodes, new_inits, used = [], [], set()
    for node in model.graph.node:
        if node.name not in nodes:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        k, n = w.shape
        if k % block:
            raise InvalidInput("spec", f"quantize floatOffset needs blockSize {block} to divide every MatMul's input "
                                       f"size ({node.name} has {k})")
        kb = k // block
        b = w.reshape(kb, block, n)
        lo, hi = b.min(1), b.max(1)
        scale = np.where(hi > lo, (hi - lo) / maxq, 1.0)
        q = np.clip(np.round((b - lo[:, None]) / scale[:, None]), 0, maxq).astype(np.uint8)  # [kb, block, n]
        codes = q.transpose(2, 0, 1)  # [n, kb, block]
        packed = codes if bits == 8 else (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
        base = node.input[1]
        new_inits += [numpy_helper.from_array(np.ascontiguousarray(packed), f"{base}_Q{bits}"),
                      numpy_helper.from_array(np.ascontiguousarray(scale.T.astype(np.float32)).reshape(-1),
                                              f"{base}_scale"),
                      numpy_helper.from_array((lo + mid * scale).astype(np.float32), f"{base}_offset")]
        used.add(base)
        x, y = node.input[0], node.output[0]
        new_nodes.append(helper.make_node("MatMulNBits", [x, f"{base}_Q{bits}", f"{base}_scale"], [f"{y}_codes"],
                                          name=f"{node.name}_Q{bits}", domain="com.microsoft", K=k, N=n, bits=bits,
                                          block_size=block, accuracy_level=level))
        _blocksum_correction(new_nodes, new_inits, sums, x, k, block, node.name, f"{base}_offset", f"{y}_codes", y)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    still = {i for nd in model.graph.node for i in nd.input}  # lm_head's weight also feeds the tied embedding
    keep = [i for i in model.graph.initializer if i.name not in used or i.name in still]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + new_inits)
    return model


def _blocksum_correction(new_nodes: list, new_inits: list, sums: dict, x: str, k: int, block: int, name: str,
                         offsets_name: str, codes_out: str, y: str) -> None:
    """y = codes_out + blocksum(x) @ offsets: the block sums of an input are made once for all its MatMuls."""
    import numpy as np  # noqa: PLC0415
    from onnx import helper, numpy_helper  # noqa: PLC0415

    axes = "lathe_blocksum_axes"
    if not any(i.name == axes for i in new_inits):
        new_inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), axes))
    key = f"{x}|{block}"
    if key not in sums:
        shape = f"{x}_lathe_blocks_shape_{block}"
        new_inits.append(numpy_helper.from_array(np.array([0, 0, k // block, block], dtype=np.int64), shape))
        new_nodes.append(helper.make_node("Reshape", [x, shape], [f"{x}_lathe_blocks_{block}"], name=f"{name}/lathe_blocks"))
        new_nodes.append(helper.make_node("ReduceSum", [f"{x}_lathe_blocks_{block}", axes], [f"{x}_lathe_blocksum_{block}"],
                                          name=f"{name}/lathe_blocksum", keepdims=0))
        sums[key] = f"{x}_lathe_blocksum_{block}"
    new_nodes.append(helper.make_node("MatMul", [sums[key], offsets_name], [f"{y}_offsets"], name=f"{name}/lathe_offsets"))
    new_nodes.append(helper.make_node("Add", [codes_out, f"{y}_offsets"], [y], name=f"{name}/lathe_add"))


def hoist_zero_points(model, level: int):
    """MatMulNBits nodes with float zero points (HQQ writes them; ONNX Runtime's CPU kernels run those about 200x
    slower) rewritten to the default integer zero point 2^(bits-1) plus the exact difference beside the kernel:
    s * (q - z) = s * (q - mid) + s * (mid - z), the second term a per-block offset (blocksum(x) @ offsets)."""
    import numpy as np  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    inits = {i.name: i for i in model.graph.initializer}
    new_nodes, new_inits, sums, used = [], [], {}, set()
    for node in model.graph.node:
        zp = inits.get(node.input[3]) if node.op_type == "MatMulNBits" and len(node.input) > 3 else None
        if zp is None or zp.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            new_nodes.append(node)
            continue
        attrs = {a.name: a.i for a in node.attribute}
        k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
        kb = -(-k // block)
        if k % block:
            new_nodes.append(node)  # a padded last block: left as it is (correct, slow)
            continue
        scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64).reshape(n, kb)
        z = numpy_helper.to_array(zp).astype(np.float64).reshape(n, kb)
        offsets = (scale * (2 ** (bits - 1) - z)).T.astype(np.float32)  # [kb, n]
        name = f"{node.input[1]}_offsets"
        new_inits.append(numpy_helper.from_array(offsets, name))
        used.add(zp.name)
        y = node.output[0]
        del node.input[3:]
        node.output[0] = f"{y}_codes"
        if "accuracy_level" in attrs:
            next(a for a in node.attribute if a.name == "accuracy_level").i = level
        else:
            node.attribute.append(helper.make_attribute("accuracy_level", level))
        new_nodes.append(node)
        _blocksum_correction(new_nodes, new_inits, sums, node.input[0], k, block, node.name, name, f"{y}_codes", y)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    keep = [i for i in model.graph.initializer if i.name not in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + new_inits)
    return model


def _pack_zero_points(zp, bits: int):
    """Zero points [N, blocks] as MatMulNBits stores them: 4-bit pairs per byte (low nibble first), each row
    padded to whole bytes."""
    import numpy as np  # noqa: PLC0415

    if bits == 8:
        return zp
    n, kb = zp.shape
    padded = np.zeros((n, kb + kb % 2), dtype=np.uint8)
    padded[:, :kb] = zp
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


def weight_matmuls(model) -> list[str]:
    """MatMul nodes whose second input is a weight (an initializer), in graph order."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits]


def resolve(patterns: list[str], names: list[str], field: str) -> list[str]:
    """Exact node names or shell patterns (/model/layers.*/mlp/down_proj/MatMul) -> the MatMuls they name."""
    out: list[str] = []
    for p in patterns:
        hits = [n for n in names if n == p or fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise InvalidInput("spec", f"quantize {field}: no weight MatMul matches {p!r} (e.g. {names[-1]}, "
                                       f"{names[0]})")
        out += [h for h in hits if h not in out]
    return out


class _Windows:
    """Calibration windows as model feeds (a CalibrationDataReader: get_next, rewind, iterable)."""

    def __init__(self, feeds: list[dict]):
        self.feeds = feeds
        self.i = 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0

    def __iter__(self):
        return iter(self.feeds)

    def __len__(self):
        return len(self.feeds)


def _reader(ctx: PassContext, src_dir: Path, calibration: CalibrationSettings | None) -> _Windows:
    from .metrics import Scorer  # noqa: PLC0415

    cal = ctx.calibration
    n = (calibration.samples if calibration and calibration.samples else None) or CALIBRATION_WINDOWS
    scorer = Scorer(src_dir, ctx.threads)
    feeds = [scorer.feeds(w[None, :]) for w in cal.windows[:n]]
    del scorer
    return _Windows(feeds)


def _awq(model, exclude: list[str], block: int, ctx: PassContext, src_dir: Path, calibration):
    """ModelOpt's INT4 AWQ on the FP32 graph: DequantizeLinear(int4) -> MatMul pairs (ONNX Runtime fuses them into
    MatMulNBits at load). awq_lite where CUDA is (cupy); awq_clip on the CPU: ModelOpt 0.47's numpy path of
    awq_lite crashes folding its scales into a norm (`numpy.ndarray` has no `.get()`, a cupy call)."""
    import importlib.util  # noqa: PLC0415

    from modelopt.onnx.quantization.int4 import quantize as quantize_int4  # noqa: PLC0415

    method = "awq_lite" if importlib.util.find_spec("cupy") is not None else "awq_clip"
    ctx.report("awq", 0.1, f"ModelOpt {method}")
    reader = _reader(ctx, src_dir, calibration)
    return quantize_int4(model, calibration_method=method, calibration_data_reader=reader.feeds,
                         calibration_eps=["cpu"], block_size=block, nodes_to_exclude=exclude or [],
                         use_external_data_format=True, log_level="WARNING")


