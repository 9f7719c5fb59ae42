"""Distillation benchmark (issue 12 item 7): all-MiniLM-L6-v2 distilled to 3 of its 6 layers by
Lathe's `distill` pass, alone and with INT8, against the teacher in FP32 and INT8, side by side in
one worker run: speedup at batch 1 (the worker's paired statistic, 95% interval) and mean/min cosine
to the teacher's embeddings on the validation set.

    PYTHONPATH=operator .venv/bin/python e2e/bench/distill_bench.py [--out e2e/bench/distill_results.md]
        [--train 1600] [--epochs 4] [--seq 128] [--threads 2] [--bench-seconds 20]
    PYTHONPATH=operator .venv/bin/python e2e/bench/distill_bench.py --digits [--epochs 8]

--digits: the comparison tests/worker/test_distill.py used to assert (issue 21: a training outcome on a
few hundred images is not a property of the code): the 8x8 digits CNN's half-width student distilled
from the teacher (KL at T=4, alpha 0.5) beside the same student trained on the labels alone (alpha 0),
same initialisation, epochs, patience and learning rate, one thread; held-out (220 of the training
images) and validation top-1, speedup. It rewrites only its own section of the results file.

Data: sentences of the standard library's docstrings (lathe.worker.samples.sentences), tokenized by
the model's own tokenizer, offline (HF_HUB_OFFLINE=1): the first 100 calibrate, the next 100
validate, the rest train (spec.data.training, no labels), disjoint. The teacher is the sentence
embedder of samples.make_minilm (mean pooling, L2 normalisation) saved with torch.export
(format pytorch-export), so the student can be cut from its graph."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lathe.api.spec import parse_spec  # noqa: E402
from lathe.worker import pipeline, samples  # noqa: E402

log = logging.getLogger("distill_bench")


def make_teacher(outdir: Path, seq: int, n_train: int) -> dict:
    import torch

    tok, model = samples.minilm_embedder()
    texts = samples.sentences(200 + n_train)
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    sets = {"calibration": slice(0, 100), "validation": slice(100, 200), "training": slice(200, 200 + n_train)}
    paths = {}
    for name, sl in sets.items():
        paths[name] = outdir / f"minilm_{name}.npz"
        np.savez(paths[name], input_ids=ids[sl], attention_mask=mask[sl])
    batch = torch.export.Dim("batch", min=1, max=1024)
    args = (torch.from_numpy(ids[:4]), torch.from_numpy(mask[:4]))
    ep = torch.export.export(model, args, dynamic_shapes=({0: batch}, {0: batch}))
    path = outdir / "minilm.pt2"
    torch.export.save(ep, str(path))
    return {"model": path, **paths}


DIGITS_BEGIN, DIGITS_END = "<!-- digits: distill_bench.py --digits -->", "<!-- /digits -->"


def digits_rows(out: Path, epochs: int) -> int:
    from e2e.bench.machine import cpu_name

    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="distill-digits-"))
    sample = samples.make_digits(work / "digits")
    train = {"learningRate": 1e-3, "epochs": epochs, "patience": epochs}
    cands = [{"name": "kd", "passes": [{"type": "distill", "width": 0.5,
                                        "distillation": {**train, "temperature": 4, "alpha": 0.5}}]},
             {"name": "labels", "passes": [{"type": "distill", "width": 0.5, "distillation": {**train, "alpha": 0}}]}]
    spec = parse_spec(samples.spec_for(sample, training=True, candidates=cands,
                                       target={"batchSizes": [64], "threads": 1},
                                       budget={"maxAccuracyDrop": 0.02, "minSpeedup": 0}))
    result = pipeline.run(spec, work / "run", bench_seconds=10)
    details = json.loads((work / "run" / "details.json").read_text())
    rows = ["| student | held-out top-1 by epoch | best held-out (epoch) | validation top-1 | drop | speedup batch 64 [95%] |",
            "|---|---|---|---|---|---|",
            f"| teacher (FP32) | - | {details['candidates']['kd']['distillation']['teacher_held_out']:.4f} | "
            f"{result.baseline.accuracy:.4f} | 0 | 1.00x |"]
    label = {"kd": "half width, distilled (KL T=4, alpha 0.5)", "labels": "half width, labels alone (alpha 0)"}
    for c in result.candidates:
        d = details["candidates"][c.name]["distillation"]
        figs = " ".join(f"{e['held_out']:.3f}" for e in d["epochs"])
        rows.append(f"| {label[c.name]} | {figs} | {d['epochs'][d['best_epoch']]['held_out']:.4f} ({d['best_epoch']}) "
                    f"| {c.accuracy:.4f} | {c.accuracy_drop:.4f} | {c.speedup_text()} |")
    section = [DIGITS_BEGIN, "## Digits CNN: distilled against labels alone", "",
               f"`e2e/bench/distill_bench.py --digits`, one worker run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
               f"{cpu_name()}, {os.cpu_count()} CPUs, one thread; 8x8 digits CNN trained by lathe.worker.samples, "
               f"880 training / 220 held-out images (of the training set), {len(np.load(sample['validation'])['labels'])} "
               f"validation images; lr 1e-3, {epochs} epochs, patience {epochs}; {time.time() - t0:.0f} s in all; load "
               f"average {os.getloadavg()[0]:.1f} at the end (the speedups are ratios timed side by side in "
               "interleaved rounds, on a loaded machine).", "",
               *rows, "",
               "One run, one seed (the pass seeds torch and numpy with 0): a difference of one or two images on these "
               "sets is a training outcome, not a property of the code; CPUs with other kernels (AVX2 only, "
               "AVX-512 VNNI) train to slightly different weights.", DIGITS_END]
    text = out.read_text() if out.exists() else ""
    if DIGITS_BEGIN in text:
        head, rest = text.split(DIGITS_BEGIN, 1)
        text = head + "\n".join(section) + rest.split(DIGITS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    out.write_text(text)
    print("\n".join(section))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("distill_results.md")))
    ap.add_argument("--train", type=int, default=1600)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench-seconds", type=float, default=20)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--digits", action="store_true", help="the digits CNN's distilled and labels-only students")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if a.digits:
        return digits_rows(Path(a.out), a.epochs if a.epochs != 4 else 8)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="distill-bench-"))
    s = make_teacher(work, a.seq, a.train)
    distill = {"type": "distill", "layers": 3,
               "distillation": {"loss": "cosine", "epochs": a.epochs, "learningRate": a.lr, "patience": 2}}
    cands = [
        {"name": "student-3l", "passes": [distill]},
        {"name": "student-3l-int8", "passes": [distill, {"type": "quantize", "precision": "int8", "mode": "dynamic",
                                                         "perChannel": True}]},
        {"name": "teacher-int8", "passes": [{"type": "quantize", "precision": "int8", "mode": "dynamic",
                                             "perChannel": True}]},
    ]
    inputs = [{"name": "input_ids", "shape": ["batch", a.seq], "dtype": "int64"},
              {"name": "attention_mask", "shape": ["batch", a.seq], "dtype": "int64"}]
    spec = parse_spec({
        "model": {"uri": str(s["model"]), "format": "pytorch-export", "inputs": inputs},
        "task": {"type": "embedding"},
        "data": {"calibration": {"uri": str(s["calibration"])}, "validation": {"uri": str(s["validation"])},
                 "training": {"uri": str(s["training"])}},
        "target": {"runtimes": ["onnxruntime"], "threads": a.threads, "batchSizes": [1, 32]},
        "budget": {"maxAccuracyDrop": 0.02, "minSpeedup": 0},
        "candidates": cands})
    result = pipeline.run(spec, work / "run", bench_seconds=a.bench_seconds)
    details = json.loads((work / "run" / "details.json").read_text())
    seconds = time.time() - t0
    rows = [result.baseline, *result.candidates]
    label = {"baseline": "teacher FP32 (6 layers)", "teacher-int8": "teacher INT8 dynamic",
             "student-3l": "student 3 layers FP32", "student-3l-int8": "student 3 layers + INT8 dynamic"}
    lines = [
        "# Distillation: all-MiniLM-L6-v2 to 3 layers (issue 12 item 7)", "",
        f"`e2e/bench/distill_bench.py`, one worker run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, target.threads {a.threads}; "
        f"sequence {a.seq}; {a.train} training / 100 calibration / 100 validation sentences (standard-library "
        f"docstrings, the model's tokenizer); {seconds:.0f} s in all.", "",
        "| model | mean cosine | min cosine | p50 batch 1 (ms) | speedup batch 1 [95%] | p50 batch 32 (ms) | size (MB) | verdict |",
        "|---|---|---|---|---|---|---|---|"]
    for c in rows:
        lat = {x.batch: x for x in c.latency}
        sp = "1.00x" if c.name == "baseline" else (
            f"{c.speedup:.2f}x [{c.speedup_low:.2f}, {c.speedup_high:.2f}]" if c.speedup else "-")
        lines.append(f"| {label.get(c.name, c.name)} | {c.accuracy:.4f} | {(c.min_cosine or 0):.4f} | "
                     f"{lat[1].p50_ms:.2f} | {sp} | {lat[32].p50_ms:.1f} | {(c.size_bytes or 0) / 1e6:.1f} | "
                     f"{c.verdict} |" if 1 in lat and 32 in lat else f"| {label.get(c.name, c.name)} | {c.reason} |")
    dist = details["candidates"].get("student-3l", {}).get("distillation")
    if dist:
        figs = ", ".join(f"{e['epoch']}: {e['held_out']:.4f}" + (f" ({e['seconds']:.0f} s)" if e["epoch"] else "")
                         for e in dist["epochs"])
        lines += ["", f"Student: {dist['student']}, parameters {dist['params_teacher'] / 1e6:.1f}M -> "
                      f"{dist['params_student'] / 1e6:.1f}M; loss {dist['loss']}, lr {dist['learning_rate']:g}; "
                      f"held-out ({dist['held_out_samples']} of the training sentences) mean cosine by epoch: {figs}; "
                      f"kept epoch {dist['best_epoch']}" + (f"; {dist['stopped']}" if dist["stopped"] else "") + "."]
    lines += ["", f"Winner (budget: mean cosine drop 0.02, no speed floor): {result.winner} — {result.selection}", ""]
    old = Path(a.out).read_text() if Path(a.out).exists() else ""
    if DIGITS_BEGIN in old:  # the --digits section is kept
        lines += [DIGITS_BEGIN + old.split(DIGITS_BEGIN, 1)[1].split(DIGITS_END, 1)[0] + DIGITS_END, ""]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
