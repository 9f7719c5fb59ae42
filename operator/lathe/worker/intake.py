"""Model intake: fetch, verify, load and normalise the model to ONNX with named dynamic axes.

ONNX files are checked (onnx.checker + an ONNX Runtime session). PyTorch models (TorchScript
`torch.jit.save` or `torch.export.save` archives) are exported to ONNX with the dims named in
spec.model.inputs (strings = dynamic axes), then the export is checked against PyTorch's own outputs
on real validation inputs, at the example's batch size and at another one."""

from __future__ import annotations

import logging
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from ..storage.paths import PathRefused
from .data import Dataset, InputMeta
from .errors import InvalidInput, WorkerError

log = logging.getLogger("lathe.worker.intake")

_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}
EXPORT_BATCH = 2


@dataclass
class ModelInfo:
    onnx_path: Path
    source: Path
    format: str
    inputs: list[InputMeta]
    outputs: list[str]
    family: str = "other"
    op_counts: dict[str, int] = field(default_factory=dict)
    params: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def torch_source(self) -> bool:
        return self.format in ("torchscript", "pytorch-export")


def fetch(uri: str, sha256: str | None, what: str) -> Path:
    try:
        return storage.resolve(uri, sha256)
    except storage.StorageError as e:
        raise InvalidInput("fetch", f"{what}: {e}", kind=e.reason) from e
    except PathRefused as e:  # a path that would leave its claim, bucket or folder
        raise InvalidInput("fetch", f"{what}: {e}") from e


def onnx_inputs(path: Path) -> tuple[list[InputMeta], list[str]]:
    import onnx  # noqa: PLC0415

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = []
    for i in m.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims: list[int | str | None] = []
        for d in t.shape.dim:
            dims.append(d.dim_param if d.dim_param else (d.dim_value if d.dim_value > 0 else None))
        inputs.append(InputMeta(i.name, dims, _ONNX_DTYPES.get(t.elem_type, "float32")))
    return inputs, [o.name for o in m.graph.output]


def analyse(path: Path) -> tuple[str, dict[str, int], int]:
    """Model family ('transformer', 'conv', 'mlp', 'other'), op counts and parameter count."""
    import onnx  # noqa: PLC0415

    m = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in m.graph.node)
    params = int(sum(np.prod(i.dims) for i in m.graph.initializer))
    inits = {i.name for i in m.graph.initializer}
    weight_mm = sum(1 for n in m.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits)
    if ops.get("Attention", 0) or (ops.get("Softmax", 0) and weight_mm >= 4 and ops.get("Conv", 0) < weight_mm):
        family = "transformer"
    elif ops.get("Conv", 0):
        family = "conv"
    elif weight_mm:
        family = "mlp"
    else:
        family = "other"
    return family, dict(ops), params


def check_onnx(path: Path, what: str = "model") -> None:
    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    try:
        m = onnx.load(str(path))
        onnx.checker.check_model(m)
    except Exception as e:
        raise InvalidInput("intake", f"{what} file {path}: not a valid ONNX model ({_short(e)})") from e
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise InvalidInput("intake", f"{what} file {path}: ONNX Runtime cannot load it ({_short(e)})") from e


def _short(e: Exception, n: int = 300) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:n]


def load_torch(path: Path, fmt: str):
    """A fresh PyTorch module from a TorchScript or torch.export archive, in eval mode."""
    import torch  # noqa: PLC0415

    if not zipfile.is_zipfile(path):
        raise InvalidInput("intake", f"model file {path}: not a {fmt} archive (not a zip file)")
    try:
        if fmt == "torchscript":
            mod = torch.jit.load(str(path), map_location="cpu")
        elif fmt == "pytorch-export":
            ep = torch.export.load(str(path))
            mod = ep.module()
            mod._lathe_exported_program = ep  # exported through the torch.export-based ONNX exporter
        else:
            raise InvalidInput("intake", f"model file {path}: unsupported PyTorch format {fmt}")
    except InvalidInput:
        raise
    except Exception as e:
        raise InvalidInput("intake", f"model file {path}: cannot load as {fmt} ({_short(e)})") from e
    try:
        mod.eval()
    except Exception:  # torch.export modules refuse .eval(); they are already in inference form
        pass
    return mod


def torch_args(feeds: dict[str, np.ndarray], inputs: list[InputMeta]) -> tuple:
    import torch  # noqa: PLC0415

    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[i.name])) for i in inputs)


def torch_outputs(module, data: Dataset, inputs: list[InputMeta], batch: int = 64) -> list[np.ndarray]:
    import torch  # noqa: PLC0415

    outs: list[list[np.ndarray]] = []
    with torch.no_grad():
        for feeds in data.batches(batch):
            o = module(*torch_args(feeds, inputs))
            o = list(o) if isinstance(o, (tuple, list)) else [o]
            outs.append([t.detach().numpy() for t in o])
    return [np.concatenate([b[k] for b in outs]) for k in range(len(outs[0]))]


def export_torch(module, inputs: list[InputMeta], data: Dataset, dst: Path, stage: str = "export") -> Path:
    """Export with named dynamic axes and check the ONNX against PyTorch at two batch sizes."""
    import torch  # noqa: PLC0415

    example = data.head(EXPORT_BATCH)
    args = torch_args(example.feeds, inputs)
    with torch.no_grad():
        out = module(*args)
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    out_names = ["output"] if n_out == 1 else [f"output_{k}" for k in range(n_out)]
    dynamic: dict[str, dict[int, str]] = {}
    for i in inputs:
        axes = {k: d for k, d in enumerate(i.shape) if isinstance(d, str)}
        if not i.shape or not axes:
            axes = {0: "batch"}
        dynamic[i.name] = axes
    for o in out_names:
        dynamic[o] = {0: "batch"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        import warnings  # noqa: PLC0415

        ep = getattr(module, "_lathe_exported_program", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ep is not None:
                # dims are dynamic as declared when the program was exported (torch.export.Dim)
                prog = torch.onnx.export(ep, args, input_names=[i.name for i in inputs], output_names=out_names,
                                         dynamo=True, optimize=True, verbose=False)
                prog.save(str(dst))
            else:
                torch.onnx.export(module, args, str(dst), input_names=[i.name for i in inputs],
                                  output_names=out_names, dynamic_axes=dynamic, opset_version=17, dynamo=False,
                                  do_constant_folding=True)
    except Exception as e:
        raise InvalidInput(stage, f"export to ONNX failed ({_short(e)})") from e
    verify_export(module, dst, inputs, data, stage)
    return dst


def verify_export(module, onnx_path: Path, inputs: list[InputMeta], data: Dataset, stage: str) -> None:
    import onnxruntime as ort  # noqa: PLC0415

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    sizes = [b for b in (min(len(data), 8), 1) if b != EXPORT_BATCH]
    for b in sizes:
        sub = data.head(b)
        ref = torch_outputs(module, sub, inputs)
        got = sess.run(None, {i.name: sub.feeds[i.name] for i in inputs})
        for k, (r, g) in enumerate(zip(ref, got, strict=False)):
            if r.shape != g.shape:
                raise WorkerError(stage, f"exported ONNX output {k} has shape {g.shape} at batch {b}, PyTorch gives "
                                         f"{r.shape} (a dimension was not exported as dynamic)")
            scale = float(np.abs(r).max()) or 1.0
            err = float(np.abs(r.astype(np.float64) - g).max()) / scale
            if err > 1e-3:
                raise WorkerError(stage, f"exported ONNX differs from PyTorch at batch {b}: output {k} max "
                                         f"relative error {err:.2e}")
    log.info("export checked against PyTorch at batch sizes %s", sizes)


def check_declared_onnx(declared: list[str], have: list[str], src: Path) -> None:
    """spec.model.inputs of an ONNX model name the model's own inputs: say which the model lacks."""
    unknown = [d for d in declared if d not in have]
    undeclared = [h for h in have if h not in declared]
    if not unknown and not undeclared:
        return
    said = []
    if unknown:
        said.append(f"the model has no input named {', '.join(map(repr, unknown))} (spec.model.inputs)")
    if undeclared:
        said.append(f"spec.model.inputs does not declare its input {', '.join(map(repr, undeclared))}")
    raise InvalidInput("intake", f"model file {src}: {'; '.join(said)}; the model's inputs are {have}")


def torch_inputs(module) -> tuple[list[str], int] | None:
    """(the forward's argument names, how many of them are required) of a TorchScript or torch.export
    model; None when the module does not say."""
    try:
        ep = getattr(module, "_lathe_exported_program", None)
        if ep is not None:
            names = [str(n) for n in ep.graph_signature.user_inputs]
            return names, len(names)
        args = [a for a in module.forward.schema.arguments if a.name != "self"]
        return [a.name for a in args], sum(not a.has_default_value() for a in args)
    except Exception as e:  # informative only: the export then finds what does not fit
        log.debug("no input names from the module: %s", e)
        return None


def check_declared_torch(declared: list[str], model: tuple[list[str], int] | None, arrays: list[str],
                         src: Path) -> None:
    """A PyTorch model takes spec.model.inputs in order (the names become the ONNX inputs and the data's
    keys). Before any data is read: more inputs than the forward takes, fewer than it needs, or a name that
    neither the model nor the data knows is the spec's mistake, said with the model's own inputs."""
    if model is None:
        return
    names, required = model
    theirs = f"the model's inputs are {names} (its forward's arguments, taken in order)"
    if len(declared) > len(names):
        extra = declared[len(names):]
        raise InvalidInput("intake", f"model file {src}: spec.model.inputs declares {len(declared)} inputs "
                                     f"{declared}, the model takes {len(names)}: it has no input for "
                                     f"{', '.join(map(repr, extra))}; {theirs}")
    if len(declared) < required:
        raise InvalidInput("intake", f"model file {src}: spec.model.inputs declares {len(declared)} inputs "
                                     f"{declared}, the model needs {required}: declare "
                                     f"{', '.join(map(repr, names[len(declared):required]))} too; {theirs}")
    unknown = [d for d in declared if d not in names and d not in arrays]
    if unknown:
        raise InvalidInput("intake", f"model file {src}: the model has no input named "
                                     f"{', '.join(map(repr, unknown))} (spec.model.inputs), and the validation data "
                                     f"has no array of that name (arrays: {sorted(arrays)}); {theirs}")


def intake(spec, workdir: Path, validation_arrays: dict[str, np.ndarray] | None = None,
           validation_path: Path | None = None) -> tuple[ModelInfo, Any]:
    """Returns the model info and, for PyTorch sources, the loaded module."""
    src = fetch(spec.model.uri, spec.model.sha256, "model")
    fmt = str(spec.model.format)
    outdir = workdir / "model"
    outdir.mkdir(parents=True, exist_ok=True)
    module = None
    if fmt == "onnx":
        check_onnx(src)
        onnx_path = src
        inputs, outputs = onnx_inputs(src)
        if spec.model.inputs:
            check_declared_onnx([i.name for i in spec.model.inputs], [i.name for i in inputs], src)
    else:
        if not spec.model.inputs:
            raise InvalidInput("intake", "spec.model.inputs is required to export a PyTorch model "
                                         "(names, shapes with named dynamic dims, dtypes)")
        module = load_torch(src, fmt)
        inputs = [InputMeta(i.name, list(i.shape), i.dtype) for i in spec.model.inputs]
        if validation_arrays is None:
            raise InvalidInput("intake", "validation data is needed to check the PyTorch export")
        check_declared_torch([i.name for i in inputs], torch_inputs(module), list(validation_arrays), src)
        from .data import load as load_data  # noqa: PLC0415

        val = load_data(validation_path or Path("validation.npz"), inputs, "validation", 64, arrays=validation_arrays)
        onnx_path = export_torch(module, inputs, val, outdir / "model.onnx", stage="intake")
        _, outputs = onnx_inputs(onnx_path)
    family, ops, params = analyse(onnx_path)
    info = ModelInfo(onnx_path=onnx_path, source=src, format=fmt, inputs=inputs, outputs=outputs, family=family,
                     op_counts=ops, params=params)
    return info, module
