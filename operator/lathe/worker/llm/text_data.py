"""Text data of task causal-lm: documents -> token windows, and what the calibration text covers.

Formats: a `.txt` file is one document; a `.jsonl` file has one document per line, either a JSON string
or an object with a "text" field (prompts: "prompt"; multiple choice: "context", "choices", "answer").
Documents are tokenized, joined with the end-of-sequence token between them, and cut into
non-overlapping windows of `window` tokens (the tail shorter than a window is dropped): the same windows
for the baseline and every candidate, so perplexity and agreement are paired figures."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput

TEXT_KEYS = ("text", "content")
# Calibration text this much shorter than this many tokens is reported: GPTQ and AWQ estimate per-channel
# statistics from it (the ModelOpt and GPTQ defaults start at 128 x 2048 tokens; a 135M model needs less).
WARN_CALIBRATION_TOKENS = 2048
# A validation token id the calibration text never holds is normal for rare words: 17k tokens of stdlib
# docstrings leave about 20% of another module's tokens unseen. Above this share the two texts differ in kind.
MAX_UNSEEN = 0.35


def _read_text(path: Path, role: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput("data", f"{role} text {path}: not UTF-8 ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise InvalidInput("data", f"{role} text {path}: cannot be read ({e})") from e


def read_jsonl(path: Path, role: str) -> list[Any]:
    rows = []
    for n, line in enumerate(_read_text(path, role).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InvalidInput("data", f"{role} {path} line {n}: not JSON ({e.msg})") from e
    return rows


def read_documents(path: Path, role: str) -> list[str]:
    """The documents of a .txt or .jsonl file; InvalidInput when there is no text at all."""
    suffix = path.suffix.lower()
    if suffix in (".npz", ".onnx", ".gguf", ".safetensors"):
        raise InvalidInput("data", f"{role} data {path}: task causal-lm reads text (.txt or .jsonl documents), "
                                   f"not {suffix}")
    if suffix == ".jsonl":
        docs = []
        for n, row in enumerate(read_jsonl(path, role), start=1):
            if isinstance(row, str):
                docs.append(row)
                continue
            text = next((row[k] for k in TEXT_KEYS if isinstance(row, dict) and isinstance(row.get(k), str)), None)
            if text is None:
                raise InvalidInput("data", f"{role} {path} document {n}: expected a string or an object with a "
                                           f"\"text\" field, got {type(row).__name__}"
                                           + (f" with keys {sorted(row)[:6]}" if isinstance(row, dict) else ""))
            docs.append(text)
    else:
        docs = [_read_text(path, role)]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise InvalidInput("data", f"{role} data {path}: no text")
    return docs


def read_prompts(path: Path) -> list[str]:
    out = []
    for n, row in enumerate(read_jsonl(path, "prompts"), start=1):
        text = row if isinstance(row, str) else row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("data", f"prompts {path} line {n}: expected {{\"prompt\": \"...\"}} or a string")
        out.append(text)
    if not out:
        raise InvalidInput("data", f"prompts {path}: no prompt")
    return out


@dataclass
class Choice:
    context: str
    choices: list[str]
    answer: int


def read_choices(path: Path) -> list[Choice]:
    out = []
    for n, row in enumerate(read_jsonl(path, "multiple-choice data"), start=1):
        ok = (isinstance(row, dict) and isinstance(row.get("context"), str) and isinstance(row.get("choices"), list)
              and len(row["choices"]) >= 2 and all(isinstance(c, str) and c for c in row["choices"])
              and isinstance(row.get("answer"), int) and 0 <= row["answer"] < len(row["choices"]))
        if not ok:
            raise InvalidInput("data", f"multiple-choice data {path} line {n}: expected {{\"context\": str, "
                                       "\"choices\": [at least 2 non-empty strings], \"answer\": index of the right one}")
        out.append(Choice(row["context"], list(row["choices"]), row["answer"]))
    if not out:
        raise InvalidInput("data", f"multiple-choice data {path}: no question")
    return out


class Tokenizer:
    """The checkpoint's fast tokenizer (tokenizer.json), without transformers."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer as Fast  # noqa: PLC0415

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise InvalidInput("intake", f"{folder}: no tokenizer.json (the checkpoint's fast tokenizer is needed "
                                         "to tokenize the text and to generate)")
        self.fast = Fast.from_file(str(path))
        cfg = _json(Path(folder) / "genai_config.json").get("model", {}) or _json(Path(folder) / "config.json")
        eos = cfg.get("eos_token_id")
        self.eos_id: int | None = (eos[0] if isinstance(eos, list) and eos else eos) if eos is not None else None
        self.unk_id: int | None = self.fast.token_to_id(self.fast.model.unk_token) \
            if getattr(self.fast.model, "unk_token", None) else None
        self.vocab_size = self.fast.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.fast.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.fast.decode(list(ids))


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class TextSet:
    """Token windows [n, window] of one data set, and the document lengths they came from."""
    path: Path
    role: str
    windows: np.ndarray
    doc_tokens: list[int]
    total_tokens: int

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def scored_tokens(self) -> int:
        return int(self.windows.shape[0] * max(self.windows.shape[1] - 1, 0))


def load_text(path: Path, tok: Tokenizer, window: int, role: str, max_windows: int | None = None) -> TextSet:
    docs = read_documents(path, role)
    ids: list[int] = []
    lengths = []
    for d in docs:
        t = tok.encode(d)
        lengths.append(len(t))
        if ids and tok.eos_id is not None:
            ids.append(tok.eos_id)
        ids.extend(t)
    n = len(ids) // window
    if n == 0:
        raise InvalidInput("data", f"{role} text {path}: {len(ids)} tokens, shorter than one window of "
                                   f"{window} (spec.task.windowTokens): give more text or a smaller window")
    if max_windows is not None:
        n = min(n, max_windows)
    arr = np.asarray(ids[: n * window], dtype=np.int64).reshape(n, window)
    return TextSet(Path(path), role, arr, lengths, len(ids))


@dataclass
class TextCoverage:
    """What the calibration text covers of the validation text (the text version of data.coverage)."""
    calibration_tokens: int = 0
    validation_tokens: int = 0
    calibration_windows: int = 0
    validation_windows: int = 0
    document_tokens: dict[str, int] = field(default_factory=dict)  # min / median / max per calibration document
    unknown_share: float = 0.0    # validation tokens the tokenizer maps to its unknown token
    unseen_share: float = 0.0     # validation tokens whose id never occurs in the calibration text
    warnings: list[str] = field(default_factory=list)


def coverage(cal: TextSet, val: TextSet, tok: Tokenizer, same_set: bool, max_unseen: float = MAX_UNSEEN) -> TextCoverage:
    v = val.windows.reshape(-1)
    c = cal.windows.reshape(-1)
    rep = TextCoverage(calibration_tokens=cal.total_tokens, validation_tokens=val.total_tokens,
                       calibration_windows=len(cal), validation_windows=len(val))
    lengths = sorted(cal.doc_tokens)
    rep.document_tokens = {"documents": len(lengths), "min": lengths[0], "median": lengths[len(lengths) // 2],
                           "max": lengths[-1]}
    rep.unknown_share = float((v == tok.unk_id).mean()) if tok.unk_id is not None and len(v) else 0.0
    rep.unseen_share = 0.0 if same_set else float((~np.isin(v, np.unique(c))).mean())
    if same_set:
        rep.warnings.append("no spec.data.calibration: the calibration text is the validation text (GPTQ/AWQ "
                            "candidates are then measured on the text they were fitted to)")
    if cal.total_tokens < WARN_CALIBRATION_TOKENS:
        rep.warnings.append(f"calibration text has {cal.total_tokens} tokens (< {WARN_CALIBRATION_TOKENS}): "
                            "GPTQ/AWQ statistics from so little text are noisy")
    if rep.unknown_share > 0.001:
        rep.warnings.append(f"{rep.unknown_share:.2%} of the validation tokens are the tokenizer's unknown token: "
                            "the text is not what this model's vocabulary was made for")
    if rep.unseen_share > max_unseen:
        rep.warnings.append(f"{rep.unseen_share:.1%} of the validation tokens never occur in the calibration text "
                            f"(> {max_unseen:.0%}): calibration does not represent the validation text")
    return rep


# ----------------------------------------------------------------------------- the embedded example's corpus
# Standard-library modules whose docstrings make the example's text: English prose about code, the same on
# every CPython 3.11 (the pinned interpreter), nothing downloaded. Validation and calibration are disjoint.
VALIDATION_MODULES = ("json", "textwrap", "argparse", "heapq", "bisect", "fractions", "string", "functools")
CALIBRATION_MODULES = ("collections", "itertools", "pathlib", "shutil", "statistics", "difflib", "csv",
                       "datetime", "decimal", "random", "tempfile", "contextlib")


def _docstrings(module_name: str) -> list[str]:
    import importlib  # noqa: PLC0415

    mod = importlib.import_module(module_name)
    out = [inspect.cleandoc(mod.__doc__)] if mod.__doc__ else []
    for name in sorted(vars(mod)):
        obj = vars(mod)[name]
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
        if doc and len(doc) > 80:
            out.append(doc)
    return out


def stdlib_corpus(modules: tuple[str, ...], max_chars: int | None = None) -> list[str]:
    """Documents (one per docstring) from the named standard-library modules, in a fixed order."""
    docs: list[str] = []
    for m in modules:
        docs.extend(_docstrings(m))
    if max_chars is not None:
        kept, n = [], 0
        for d in docs:
            if n >= max_chars:
                break
            kept.append(d)
            n += len(d)
        docs = kept
    return docs


def write_jsonl(path: Path, docs: list[str], key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({key: d}) + "\n" for d in docs))
    return path
