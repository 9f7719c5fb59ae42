"""The onnxruntime-genai model builder, its build cache, and the export's verification against transformers.

A build is a folder the generation runtime loads: model.onnx, model.onnx.data, genai_config.json and the
tokenizer files. The builder runs in a child process (`python -m onnxruntime_genai.models.builder`): it
prints a progress line per tensor, holds the checkpoint in memory while it writes, and a failure there
must not take the worker with it. Builds are cached by content (the checkpoint's fingerprint, the
precision, the options, the builder's version) under $LATHE_LLM_CACHE (default ~/.cache/lathe/llm/builds), and
used from there, read-only: the FP32 build of a 135M model is 540 MB, and ONNX refuses to read external data
through a hard link (its guard against link attacks), so neither a copy nor a link is made."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InvalidInput, WorkerError

log = logging.getLogger("lathe.worker.llm.export")

NOT_MODEL_FILES = ("builder.log", ".complete", "verified.json")  # in a build folder, not read by the runtime
BUILDER_TIMEOUT = int(os.environ.get("LATHE_LLM_BUILD_TIMEOUT", "1800"))
# Prompts the export is verified on: short, different in kind (prose, code, a question)
VERIFY_PROMPTS = ("The capital of France is", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.",
                  "Question: what is two plus two?\nAnswer:")
VERIFY_RTOL = 1e-3  # the largest logit difference allowed, relative to the largest logit


def cache_root() -> Path:
    root = os.environ.get("LATHE_LLM_CACHE")
    if root:
        return Path(root)
    from ...storage import cache_dir  # noqa: PLC0415

    return cache_dir() / "llm"


def builder_version() -> str:
    import onnxruntime_genai as og  # noqa: PLC0415

    return str(getattr(og, "__version__", "unknown"))


@lru_cache(maxsize=1)
def supported_architectures() -> frozenset[str]:
    """The `architectures[0]` values the installed builder dispatches on, read from its own source so that
    the check follows the pinned version."""
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec("onnxruntime_genai.models.builder")
    if spec is None or spec.origin is None:
        raise WorkerError("export", "onnxruntime-genai's model builder is not installed in this worker")
    src = Path(spec.origin).read_text()
    return frozenset(re.findall(r'config\.architectures\[0\] == "(\w+)"', src))


def check_architecture(config: dict, where: str) -> str:
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch is None:
        raise InvalidInput("intake", f"{where}: config.json names no architecture (\"architectures\": [...])")
    known = supported_architectures()
    if arch not in known:
        raise InvalidInput("intake", f"{where}: architecture {arch} is not one the onnxruntime-genai model builder "
                                     f"{builder_version()} can export (it knows {', '.join(sorted(known))})")
    return arch


def option_args(options: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(options.items())]


def build_key(fingerprint: str, precision: str, options: dict[str, str], extra: str = "") -> str:
    doc = json.dumps({"checkpoint": fingerprint, "precision": precision, "options": options,
                      "builder": builder_version(), "extra": extra}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


def _cached(key: str) -> Path | None:
    d = cache_root() / "builds" / key
    return d if all((d / f).exists() for f in ("model.onnx", "genai_config.json", ".complete")) else None


def _store(key: str, built: Path) -> Path:
    """Move a finished build into the cache whole (rename), or leave the one a concurrent worker stored."""
    root = cache_root() / "builds"
    root.mkdir(parents=True, exist_ok=True)
    (built / ".complete").write_text(key)
    final = root / key
    try:
        os.rename(built, final)
    except OSError:
        if _cached(key) is None:
            raise
        shutil.rmtree(built, ignore_errors=True)
    return final


def run_builder(checkpoint: Path, out: Path, precision: str, options: dict[str, str], log_path: Path,
                cache_dir: Path) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache_dir),
           "--extra_options", "hf_token=false", *option_args(options)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    with open(log_path, "w") as logf:
        try:
            r = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=BUILDER_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise WorkerError("export", f"the model builder ran longer than {BUILDER_TIMEOUT}s "
                                        "(LATHE_LLM_BUILD_TIMEOUT)") from e
    if r.returncode != 0:
        tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-6:]
        raise WorkerError("export", f"the model builder failed ({precision}, {option_args(options)}): "
                                    + " | ".join(t[-300:] for t in tail))
    missing = [f for f in ("model.onnx", "genai_config.json", "tokenizer.json") if not (out / f).exists()]
    if missing:
        raise WorkerError("export", f"the model builder wrote no {', '.join(missing)} in {out}")


def build(checkpoint: Path, fingerprint: str, precision: str = "fp32",
          options: dict[str, str] | None = None) -> tuple[Path, bool]:
    """The model folder in the build cache (built first when missing); (folder, True when it was there)."""
    options = dict(options or {})
    key = build_key(fingerprint, precision, options)
    hit = _cached(key)
    from_cache = hit is not None
    if hit is None:
        tmp_root = cache_root() / "builds"
        tmp_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=tmp_root))
        try:
            out = work / "model"
            run_builder(checkpoint, out, precision, options, work / "builder.log", work / "cache")
            shutil.copy2(work / "builder.log", out / "builder.log")
            hit = _store(key, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return hit, from_cache


def folder_bytes(folder: Path) -> int:
    """What the runtime loads: every file but the builder's log and the cache's mark."""
    return sum(f.stat().st_size for f in Path(folder).iterdir()
               if f.is_file() and f.name not in NOT_MODEL_FILES)


def verify_cached(checkpoint: Path, folder: Path, tok, threads: int = 0) -> dict:
    """verify(), once per build: a build in the cache is the same bytes every time, so its verification is kept
    beside it (verified.json) and reused."""
    mark = folder / "verified.json"
    try:
        return {**json.loads(mark.read_text()), "cached": True}
    except (OSError, ValueError):
        pass
    doc = verify(checkpoint, folder, tok, threads)
    try:
        mark.write_text(json.dumps(doc))
    except OSError:  # a read-only cache: verified again next time
        pass
    return doc


def verify(checkpoint: Path, folder: Path, tok, threads: int = 0,
           prompts: tuple[str, ...] = VERIFY_PROMPTS) -> dict:
    """The FP32 export against transformers' own forward pass on the checkpoint: logits close and the same
    next-token argmax at every position of each prompt. Raises WorkerError when they differ."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    from .metrics import Scorer  # noqa: PLC0415

    torch.set_num_threads(max(1, threads or (os.cpu_count() or 1)))
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    model.eval()
    scorer = Scorer(folder, threads)
    worst, positions = 0.0, 0
    for p in prompts:
        ids = np.asarray([tok.encode(p)], dtype=np.int64)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)).logits.float().numpy()
        got = scorer.run(ids)
        rel = float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-12))
        worst = max(worst, rel)
        positions += ids.shape[1]
        if not np.array_equal(got.argmax(-1), ref.argmax(-1)):
            bad = int((got.argmax(-1) != ref.argmax(-1)).sum())
            raise WorkerError("export", f"the ONNX export disagrees with transformers on {p!r}: next-token argmax "
                                        f"differs at {bad} of {ids.shape[1]} positions (largest logit difference "
                                        f"{rel:.2e} of the largest logit)")
        if rel > VERIFY_RTOL:
            raise WorkerError("export", f"the ONNX export's logits differ from transformers' on {p!r} by {rel:.2e} "
                                        f"of the largest logit (> {VERIFY_RTOL:g})")
    del model
    return {"prompts": len(prompts), "positions": positions, "max_relative_logit_difference": worst}
