"""Intake of a causal LM: where the checkpoint is, what it is, and whether this worker can take it.

Formats (spec.model.format):
- hf: a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json). A path or pvc:// names the
  folder; an s3:// object or https:// download is a .tar or .tar.gz of it (a folder is not one object), unpacked
  once into the cache by its sha256.
- gguf: one .gguf file (llama.cpp). Its tensors are dequantized to FP32 by transformers (`gguf_file=`) and saved
  as a safetensors folder, cached by the file's sha256: about a minute for a 135M model on 2 cores. The FP32
  baseline then carries the GGUF's own rounding (a Q4_1 file's weights already sit on a 4-bit grid).

Refused before anything is loaded (InvalidInput): an architecture the model builder cannot export, no tokenizer,
no weights, a GGUF whose tensor types cannot be dequantized or whose architecture transformers cannot read, and a
checkpoint too big for the worker's memory (the limit: $LATHE_MEMORY_LIMIT, which the operator sets from the
container's limits.memory through the Downward API, else the cgroup's memory.max, else the machine's memory)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInput
from ..limits import memory_limit_bytes
from .export import cache_root, check_architecture

log = logging.getLogger("lathe.worker.llm.checkpoint")

# Bytes of memory an export needs per parameter: the FP32 weights held by transformers' loader, the builder's
# copy of the graph's initializers and ONNX Runtime's session of the result (measured peak of the SmolLM2-135M
# FP32 build and verification: about 3.2 GB for 0.54 GB of FP32 weights, i.e. 6 copies; 7 keeps a margin).
BYTES_PER_PARAM = 4 * 7
_SAFETENSOR_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
GGUF_MAGIC = b"GGUF"


@dataclass
class Checkpoint:
    folder: Path         # a Hugging Face folder the builder and transformers read
    source: Path         # what the spec named, resolved to this machine
    format: str          # hf | gguf
    architecture: str
    params: int
    fingerprint: str     # content key of the build cache
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    converted_seconds: float | None = None


# ------------------------------------------------------------------------------------------------ memory
def check_memory(params: int, where: str) -> None:
    limit = memory_limit_bytes()
    need = params * BYTES_PER_PARAM
    if limit is not None and need > limit:
        raise InvalidInput("intake", f"{where}: {params / 1e6:.0f}M parameters need about {need / 2**30:.1f} GiB "
                                     f"to export in FP32, more than this worker's memory limit of "
                                     f"{limit / 2**30:.1f} GiB: raise spec.target.resources.limits.memory, or "
                                     "give a smaller model")


# ------------------------------------------------------------------------------------------------ hf folders
def _safetensors_params(path: Path) -> int:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 << 20:
            raise InvalidInput("intake", f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise InvalidInput("intake", f"{path}: not a safetensors file (unreadable header)") from e
    total = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        count = 1
        for d in v.get("shape", []):
            count *= int(d)
        total += count
    return total


def _folder_with_config(root: Path) -> Path:
    if (root / "config.json").is_file():
        return root
    subs = [p for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    if len(subs) == 1:
        return subs[0]
    raise InvalidInput("intake", f"{root}: no config.json (a Hugging Face checkpoint folder has config.json, "
                                 "*.safetensors and tokenizer.json)")


def _unpack(archive: Path, sha: str) -> Path:
    dest = cache_root() / "checkpoints" / f"tar-{sha[:24]}"
    if (dest / ".complete").exists():
        return _folder_with_config(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")  # refuses absolute paths, .. and links out of the folder
        (tmp / ".complete").write_text(sha)
        os.rename(tmp, dest)
    except (tarfile.TarError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (dest / ".complete").exists():
            return _folder_with_config(dest)
        raise InvalidInput("intake", f"{archive}: cannot unpack the checkpoint archive ({e})") from e
    return _folder_with_config(dest)


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (real path, size, mtime) in the cache: a checkpoint's weights are hashed
    once, not on every run (538 MB for a 135M model)."""
    from ...storage import sha256_file  # noqa: PLC0415

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_root() / "sha256" / key
    try:
        text = memo.read_text().strip()
        if len(text) == 64:
            return text
    except OSError:
        pass
    digest = sha256_file(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(digest)
    except OSError:  # a read-only cache: hashed again next time
        pass
    return digest


def _fingerprint(folder: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def read_hf(folder: Path, where: str) -> tuple[dict, str, int, list[Path]]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput("intake", f"{where}: config.json cannot be read ({e})") from e
    arch = check_architecture(config, where)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise InvalidInput("intake", f"{where}: no *.safetensors weights in the checkpoint folder")
    if not (folder / "tokenizer.json").is_file():
        raise InvalidInput("intake", f"{where}: no tokenizer.json in the checkpoint folder (the fast tokenizer is "
                                     "needed to tokenize the text and to generate; save it with "
                                     "AutoTokenizer.from_pretrained(...).save_pretrained(folder))")
    params = sum(_safetensors_params(w) for w in weights)
    return config, arch, params, weights


def from_hf(path: Path, uri: str) -> Checkpoint:
    if path.is_dir():
        folder = _folder_with_config(path)
    elif tarfile.is_tarfile(path):
        folder = _unpack(path, file_sha256(path))
    else:
        raise InvalidInput("intake", f"{uri}: format hf expects a checkpoint folder (a path or pvc://) or a .tar or "
                                     ".tar.gz of one (s3://, https://), not a single file")
    config, arch, params, weights = read_hf(folder, uri)
    check_memory(params, uri)
    fp = _fingerprint(folder, [folder / "config.json", *weights, folder / "tokenizer.json"])
    return Checkpoint(folder, path, "hf", arch, params, fp, config)


# ------------------------------------------------------------------------------------------------ gguf files
def gguf_problems(path: Path) -> tuple[str, int, str]:
    """(architecture, parameters, tensor type summary) of a GGUF file, or InvalidInput for one this worker
    cannot convert."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise InvalidInput("intake", f"{path}: not a GGUF file (starts with {magic!r}, not {GGUF_MAGIC!r})")
    import gguf  # noqa: PLC0415
    from gguf import quants  # noqa: PLC0415

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # a truncated or corrupt file fails in numpy's memmap or the field parser
        raise InvalidInput("intake", f"{path}: unreadable GGUF ({type(e).__name__}: {str(e)[:200]})") from e
    field_ = reader.fields.get("general.architecture")
    arch = str(field_.contents()) if field_ is not None else "?"
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES  # noqa: PLC0415

    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise InvalidInput("intake", f"{path}: GGUF architecture {arch!r} cannot be converted by transformers "
                                     f"(it reads {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})")
    dequantizable = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                     *getattr(quants, "_type_traits", {}).keys()}
    counts: dict[str, int] = {}
    bad: dict[str, int] = {}
    params = 0
    for t in reader.tensors:
        name = t.tensor_type.name
        counts[name] = counts.get(name, 0) + 1
        if t.tensor_type not in dequantizable:
            bad[name] = bad.get(name, 0) + 1
        params += int(t.n_elements)
    if bad:
        raise InvalidInput("intake", f"{path}: {sum(bad.values())} tensor(s) of type "
                                     f"{', '.join(sorted(bad))} cannot be dequantized (the gguf package reads "
                                     f"{', '.join(sorted(q.name for q in dequantizable))})")
    return arch, params, ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda x: -x[1]))


_CONVERT = r"""
import sys, json
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
src, out = Path(sys.argv[1]), Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype="float32")
# save_pretrained refuses a model loaded from GGUF: the same class built from its config, without the
# GGUF's quantization_config, takes the dequantized state dict and saves as plain safetensors
config = model.config
if hasattr(config, "quantization_config"):
    delattr(config, "quantization_config")
fresh = type(model)(config)
missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
if [m for m in missing if "lm_head" not in m] or unexpected:
    sys.exit(f"state dict does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
fresh.save_pretrained(str(out))
tok.save_pretrained(str(out))
"""


def convert_gguf(path: Path, sha: str) -> tuple[Path, float | None]:
    """The GGUF as a Hugging Face FP32 folder, from the cache when this file was converted before."""
    import time  # noqa: PLC0415

    dest = cache_root() / "checkpoints" / f"gguf-{sha[:24]}"
    if (dest / ".complete").exists():
        return dest, None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=dest.parent))
    t0 = time.monotonic()
    logf = tmp.with_suffix(".log")
    try:
        with open(logf, "w") as lf:
            r = subprocess.run([sys.executable, "-c", _CONVERT, str(path), str(tmp)], stdout=lf,
                               stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                             "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"})
        if r.returncode != 0:
            tail = [ln for ln in logf.read_text(errors="replace").splitlines() if ln.strip()][-4:]
            raise InvalidInput("intake", f"{path}: GGUF to FP32 conversion failed: " + " | ".join(tail)[-600:])
        (tmp / ".complete").write_text(sha)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / ".complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        logf.unlink(missing_ok=True)
    return dest, time.monotonic() - t0


def from_gguf(path: Path, uri: str) -> Checkpoint:
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise InvalidInput("intake", f"{uri}: format gguf expects one .gguf file ({len(found)} in the folder)")
        path = found[0]
    arch, params, types = gguf_problems(path)
    check_memory(params, uri)
    sha = file_sha256(path)
    folder, seconds = convert_gguf(path, sha)
    config, arch_hf, _, _ = read_hf(folder, f"{uri} (converted)")
    note = (f"GGUF ({arch}, tensors {types}) dequantized to FP32: the baseline carries the GGUF's own rounding, "
            "so its perplexity is the quantized file's, not the original model's")
    return Checkpoint(folder, path, "gguf", arch_hf, params, f"gguf:{sha}", config, [note], seconds)


def prepare(spec) -> Checkpoint:
    from ..intake import fetch  # noqa: PLC0415

    path = fetch(spec.model.uri, spec.model.sha256, "model")
    fmt = str(spec.model.format)
    if fmt == "hf":
        return from_hf(path, spec.model.uri)
    if fmt == "gguf":
        return from_gguf(path, spec.model.uri)
    raise InvalidInput("intake", f"spec.model.format: task causal-lm reads hf or gguf checkpoints, not {fmt}")

