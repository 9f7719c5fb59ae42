"""A tiny causal LM for serving tests, built offline in seconds: a byte-level BPE tokenizer trained on
standard-library docstrings, a 2-layer Llama (hidden 64) trained for a few steps on the same text (so that its
next-token distribution has some shape: greedy output is not one repeated token, and weight-only INT8 agrees
with FP32 the way it does on real models), saved as a Hugging Face checkpoint, then built by the
onnxruntime-genai model builder at several precisions, the same builder the worker runs.

    python -m tests.serving.llm_models OUT      # OUT/ckpt, OUT/fp32, OUT/int8, OUT/int4, OUT/noisy, OUT/build.json

`noisy` is the FP32 build with Gaussian noise added to every weight-only MatMul (a canary that loads, runs
as fast as stable and answers differently). Run in a subprocess by the fixture: torch and the builder stay
out of the test process.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path

MODULES = ("json", "collections", "argparse", "pathlib", "textwrap", "functools", "string", "shutil")
PRECISIONS = ("fp32", "int8", "int4")


def corpus() -> list[str]:
    import importlib

    docs = []
    for name in MODULES:
        mod = importlib.import_module(name)
        for _, obj in inspect.getmembers(mod):
            d = inspect.getdoc(obj)
            if d and len(d) > 40:
                docs.append(d)
    return sorted(set(docs))


def build_checkpoint(out: Path, *, vocab: int = 384, steps: int = 120, seed: int = 0) -> dict:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    docs = corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    ft = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                 unk_token="<|endoftext|>")
    torch.set_num_threads(1)  # on 2 busy cores one thread trains this model ten times faster than two
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(ft), max_position_embeddings=256, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    ids = torch.tensor(ft("\n\n".join(docs))["input_ids"])
    seq = 64
    windows = ids[: len(ids) // seq * seq].view(-1, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = windows[torch.randint(0, len(windows), (8,), generator=g)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(round(float(loss), 4))
    ckpt = out / "ckpt"
    model.save_pretrained(ckpt)
    ft.save_pretrained(ckpt)
    return {"tokens": len(ids), "loss_first": losses[0], "loss_last": losses[-1], "vocab": len(ft)}


def build_genai(ckpt: Path, out: Path, precision: str) -> Path:
    """The worker's conversion: the onnxruntime-genai model builder (the CLI's two calls, in-process)."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    dst, cache = out / precision, out / ".builder-cache"
    opts = parse_extra_options(None, str(ckpt), str(dst), precision, "cpu", str(cache), ["hf_token=false"])
    create_model(None, str(ckpt), str(dst), precision, "cpu", str(cache), **opts)
    return dst


def add_noise(src: Path, dst: Path, scale: float = 0.5, seed: int = 1) -> Path:
    """A copy of an FP32 model folder whose MatMul weights got Gaussian noise (scale x each weight's std)."""
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    m = onnx.load(str(src / "model.onnx"))  # the external weights next to it are read in
    rng = np.random.default_rng(seed)
    for t in m.graph.initializer:
        if "MatMul" in t.name and t.data_type == onnx.TensorProto.FLOAT:
            w = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array((w + rng.normal(0, scale * w.std(), w.shape)).astype(np.float32),
                                               t.name))
    (dst / "model.onnx").unlink()
    (dst / "model.onnx.data").unlink()
    onnx.save(m, str(dst / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    return dst


def main(out: str) -> int:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    info = build_checkpoint(root)
    info["train_s"] = round(time.time() - t0, 1)
    for p in PRECISIONS:
        t = time.time()
        build_genai(root / "ckpt", root, p)
        info[f"build_{p}_s"] = round(time.time() - t, 1)
    add_noise(root / "fp32", root / "noisy")
    info["total_s"] = round(time.time() - t0, 1)
    (root / "build.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
