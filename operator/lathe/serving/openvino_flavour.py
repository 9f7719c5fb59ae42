"""Triton flavours for OpenVINO winners (model.xml + model.bin, as the worker's openvino backend saves them).

- `openvino`         → `backend: "openvino"`: Triton's own OpenVINO backend loads `<v>/model.xml` (+ `model.bin`).
                       What a production CPU Triton with that backend serves (`publish.flavour: auto|openvino`).
- `python` (runtime openvino) → `backend: "python"`: the same two files plus a generated `<v>/model.py` that runs
                       them with OpenVINO inside Triton's Python backend, for Tritons without the OpenVINO
                       backend (the pytriton wheel used by the tests). Registered as `python:openvino`;
                       `config.flavour_for("python", "openvino")` picks it.

The signature is read from the IR itself (names, element types, partial shapes: a dynamic dim becomes -1; a
model reshaped to a static batch is served with max_batch_size 0 and its full shape). Importing this module
does not import OpenVINO; reading the signature does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .config import ConfigError, ConfigOptions, Flavour, Signature, TensorSig, register_flavour, render_config

# OpenVINO element type names -> Triton data types
_OV_TO_TRITON = {
    "f32": "TYPE_FP32", "f16": "TYPE_FP16", "bf16": "TYPE_BF16", "f64": "TYPE_FP64", "i64": "TYPE_INT64",
    "i32": "TYPE_INT32", "i16": "TYPE_INT16", "i8": "TYPE_INT8", "u8": "TYPE_UINT8", "u16": "TYPE_UINT16",
    "u32": "TYPE_UINT32", "u64": "TYPE_UINT64", "boolean": "TYPE_BOOL", "string": "TYPE_STRING",
}


def openvino_signature(xml: str | Path) -> Signature:
    """Inputs and outputs of an OpenVINO IR (model.xml)."""
    import openvino as ov  # noqa: PLC0415

    model = ov.Core().read_model(str(xml))

    def sig(port, kind: str) -> TensorSig:
        names = sorted(port.get_names())
        if not names:
            raise ConfigError(f"{xml}: an {kind} has no tensor name (Triton addresses tensors by name)")
        et = port.get_element_type().get_type_name()
        if et not in _OV_TO_TRITON:
            raise ConfigError(f"{xml}: {kind} {names[0]!r} has element type {et} that Triton cannot serve")
        ps = port.get_partial_shape()
        if ps.rank.is_dynamic:
            raise ConfigError(f"{xml}: {kind} {names[0]!r} has a dynamic rank")
        dims = tuple(d.get_length() if d.is_static else -1 for d in ps)
        return TensorSig(port.get_any_name(), _OV_TO_TRITON[et], dims)

    ins = tuple(sig(p, "input") for p in model.inputs)
    outs = tuple(sig(p, "output") for p in model.outputs)
    if not ins or not outs:
        raise ConfigError(f"{xml}: model has no inputs or no outputs")
    return Signature(ins, outs)


def _ir_files(artifacts: Mapping[str, Path], what: str) -> dict[str, Path]:
    xml = [p for n, p in artifacts.items() if n.endswith(".xml")]
    if len(xml) != 1:
        raise ConfigError(f"{what} needs exactly one OpenVINO IR (*.xml + *.bin), got {sorted(artifacts)}")
    bins = [p for n, p in artifacts.items() if n.endswith(".bin")]
    bin_ = bins[0] if len(bins) == 1 else xml[0].with_suffix(".bin")
    if not Path(bin_).is_file():
        raise ConfigError(f"{what}: the weights {bin_} beside {xml[0]} are missing")
    return {"model.xml": Path(xml[0]), "model.bin": Path(bin_)}


class OpenVINOFlavour(Flavour):
    """backend: openvino (Triton's OpenVINO backend): <v>/model.xml + <v>/model.bin."""
    name = "openvino"

    def files(self, artifacts):
        return _ir_files(artifacts, "openvino flavour")

    def signature(self, artifacts, files):
        return openvino_signature(files["model.xml"])

    def config(self, model_name, sig, opts, files):
        return render_config(model_name, sig, opts, backend="openvino")


class PythonOpenVINOFlavour(OpenVINOFlavour):
    """backend: python; model.py runs <v>/model.xml with OpenVINO inside Triton."""
    name = "python:openvino"
    label = "python"

    def config(self, model_name, sig, opts, files):
        params = {"inference_num_threads": "1", **opts.parameters}
        o = ConfigOptions(opts.max_batch_size, opts.dynamic_batching, opts.instances, opts.versions, params)
        return render_config(model_name, sig, o, backend="python")

    def generated(self, model_name, sig, opts):
        return {"model.py": (Path(__file__).parent / "python_openvino_model.py").read_bytes()}


for _f in (OpenVINOFlavour(), PythonOpenVINOFlavour()):
    register_flavour(_f)

__all__ = ["OpenVINOFlavour", "PythonOpenVINOFlavour", "openvino_signature"]
