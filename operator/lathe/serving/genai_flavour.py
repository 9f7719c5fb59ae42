"""Triton flavour for causal LMs built by the onnxruntime-genai model builder (`publish.flavour: genai`).

The artifact is the builder's model folder (model.onnx, its external weights model.onnx.data,
genai_config.json, tokenizer files). A version holds that folder's files as they are, plus a generated
`model.py` (python_genai_model.py) that serves them with onnxruntime-genai inside Triton's Python backend,
decoupled so that Triton's `generate_stream` endpoint streams one response per token:

    <repo>/<model>/config.pbtxt      backend python, max_batch_size 0, decoupled, the fixed LLM signature
    <repo>/<model>/<v>/model.onnx, model.onnx.data, genai_config.json, tokenizer.json, ..., model.py,
                       lathe.json, report.json

The signature is the same for every causal LM (text in, text and token ids out; the teacher-forced scoring
inputs and outputs the token canary uses), so versions of one model always share their config. Published
atomically by serving.repository like every flavour; the version's digest covers every file of the folder
(the graph alone stays the same when only the weights change).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from google.protobuf import text_format

from .config import AUTO_FLAVOUR, ConfigError, Flavour, Signature, TensorSig, check_config, register_flavour

RUNTIME = "onnxruntime-genai"
# (name, Triton type, dims, optional)
INPUTS = (
    ("text_input", "TYPE_STRING", (1,), True),
    ("input_ids", "TYPE_INT64", (-1,), True),
    ("chat", "TYPE_BOOL", (1,), True),
    ("stream", "TYPE_BOOL", (1,), True),
    ("max_tokens", "TYPE_INT32", (1,), True),
    ("temperature", "TYPE_FP32", (1,), True),
    ("top_k", "TYPE_INT32", (1,), True),
    ("top_p", "TYPE_FP32", (1,), True),
    ("seed", "TYPE_INT64", (1,), True),
    ("score_ids", "TYPE_INT64", (-1,), True),
)
OUTPUTS = (
    ("text_output", "TYPE_STRING", (1,)),
    ("output_ids", "TYPE_INT64", (-1,)),
    ("token_logprobs", "TYPE_FP32", (-1,)),
    ("argmax_ids", "TYPE_INT64", (-1,)),
)
SIGNATURE = Signature(tuple(TensorSig(n, t, d) for n, t, d, _ in INPUTS),
                      tuple(TensorSig(n, t, d) for n, t, d in OUTPUTS))
# Files Lathe writes into every version: a model folder holding one of these is refused, not overwritten.
RESERVED = {"model.py", "lathe.json", "report.json", "report.html", "calibration-profile.json"}


def model_folder_files(folder: Path) -> dict[str, Path]:
    """The files of an onnxruntime-genai model folder (hidden files, such as a build cache's markers, left out),
    checked by check_model_files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"genai flavour needs the model builder's output folder, got {folder}")
    subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if subdirs:
        raise ConfigError(f"{folder}: sub-folders {subdirs} (a model folder is flat)")
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}
    return check_model_files(files, str(folder))


def check_model_files(files: Mapping[str, Path], where: str) -> dict[str, Path]:
    """{name in the version: path} of a model folder, checked: genai_config.json, the decoder graph it names, that
    graph's external weights, a tokenizer, nothing Lathe writes itself. Raises ConfigError naming what is wrong;
    returns the files with the decoder graph first (repository.identify takes the first "model*" file as the
    version's main file)."""
    files = {str(n): Path(p) for n, p in files.items()}
    if "genai_config.json" not in files:
        raise ConfigError(f"{where}: no genai_config.json (not an onnxruntime-genai model folder)")
    try:
        decoder = json.loads(files["genai_config.json"].read_text())["model"]["decoder"]["filename"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{where}: genai_config.json has no model.decoder.filename ({e})") from None
    if decoder != Path(decoder).name or decoder not in files:
        raise ConfigError(f"{where}: the decoder graph {decoder!r} named by genai_config.json is missing")
    clash = sorted(RESERVED & set(files))
    if clash:
        raise ConfigError(f"{where}: holds {clash}, which Lathe writes into every version")
    if not any(n in files for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ConfigError(f"{where}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    missing = sorted(loc for loc in external_data(files[decoder]) if loc not in files)
    if missing:
        raise ConfigError(f"{where}: {decoder} keeps its weights in {missing}, which are not among its files")
    return {decoder: files.pop(decoder), **files}


def external_data(graph: Path) -> set[str]:
    """File names the graph's external initializers live in (the graph itself is small: weights are outside)."""
    import onnx  # noqa: PLC0415

    m = onnx.load(str(graph), load_external_data=False)
    out = set()
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location")
            if loc:
                out.add(loc)
    return out


def genai_config_text(model_name: str, versions, instances: int, parameters: Mapping[str, str]) -> str:
    from tritonclient.grpc import model_config_pb2  # noqa: PLC0415

    cfg = model_config_pb2.ModelConfig()
    cfg.name, cfg.backend, cfg.max_batch_size = model_name, "python", 0
    for name, dtype, dims, optional in INPUTS:
        i = cfg.input.add()
        i.name, i.data_type, i.optional = name, model_config_pb2.DataType.Value(dtype), optional
        i.dims.extend(dims)
    for name, dtype, dims in OUTPUTS:
        o = cfg.output.add()
        o.name, o.data_type = name, model_config_pb2.DataType.Value(dtype)
        o.dims.extend(dims)
    cfg.model_transaction_policy.decoupled = True
    if versions:
        cfg.version_policy.specific.versions.extend(sorted(set(int(v) for v in versions)))
    else:
        cfg.version_policy.latest.num_versions = 1
    g = cfg.instance_group.add()
    g.kind, g.count = model_config_pb2.ModelInstanceGroup.KIND_CPU, instances
    for k, v in sorted({"intra_op_threads": "1", "max_concurrent": "4", **parameters}.items()):
        cfg.parameters[k].string_value = str(v)
    text = text_format.MessageToString(cfg)
    check_config(text, name=model_name)
    return text


class GenAIFlavour(Flavour):
    """backend: python, decoupled; model.py streams tokens with onnxruntime-genai (python_genai_model.py)."""
    name = "genai"
    digest_all_files = True  # repository.identify: the weights live outside model.onnx

    def files(self, artifacts: Mapping[str, Path]) -> dict[str, Path]:
        """The model folder itself, or its files as {name: path} (the worker leaves its build cache's own files
        out); either way checked as a whole model folder."""
        dirs = [p for p in artifacts.values() if Path(p).is_dir()]
        if len(dirs) == 1 and len(artifacts) == 1:
            return model_folder_files(dirs[0])
        if dirs:
            raise ConfigError(f"genai flavour needs one model folder or its files, got {sorted(artifacts)}")
        return check_model_files(artifacts, "the model files")

    def signature(self, artifacts, files):
        return SIGNATURE

    def config(self, model_name, sig, opts, files):
        return genai_config_text(model_name, opts.versions, opts.instances, opts.parameters)

    def generated(self, model_name, sig, opts):
        return {"model.py": (Path(__file__).parent / "python_genai_model.py").read_bytes()}


register_flavour(GenAIFlavour())
AUTO_FLAVOUR.setdefault(RUNTIME, "genai")

__all__ = ["GenAIFlavour", "SIGNATURE", "INPUTS", "OUTPUTS", "model_folder_files", "check_model_files",
           "genai_config_text"]
