"""CPU benchmark: Lathe's automatically chosen candidate vs FP32 ONNX Runtime vs ONNX Runtime's
plain `quantize_static` and `quantize_dynamic` (default settings), side by side in one run, on
all-MiniLM-L6-v2 (sequence 128, batch 1 and 32) and the 32x32 digits CNN `lathe run` trains (batch 1
and 64).

    PYTHONPATH=operator .venv/bin/python e2e/bench/cpu_bench.py [--out e2e/bench/cpu_results.md]

Speedups are the worker's own statistic (lathe.evaluate.benchmark): the geometric mean over
interleaved rounds of the per-round ratio against FP32 (the machine drifts; pairing cancels it),
with a 95% interval; accuracy is measured on the validation set of each sample."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operator"))

from lathe.api.spec import parse_spec  # noqa: E402
from lathe.api.status import WorkerResult  # noqa: E402
from lathe.evaluate.benchmark import benchmark  # noqa: E402
from lathe.evaluate.metrics import score  # noqa: E402
from lathe.worker import pipeline, samples  # noqa: E402
from lathe.worker.backends import Artifact, get_backend  # noqa: E402
from lathe.worker.data import Dataset  # noqa: E402
from lathe.worker.passes.quantize import quiet_ort_logs  # noqa: E402

log = logging.getLogger("cpu_bench")


class Reader:
    def __init__(self, feeds: dict[str, np.ndarray], batch: int = 8):
        self.batches = [{k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, len(next(iter(feeds.values()))), batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]

    def rewind(self):
        self.i = 0


def plain_quantizers(fp32: Path, cal: dict[str, np.ndarray], outdir: Path) -> dict[str, Path]:
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    out = {}
    p = outdir / "ort_quantize_static.onnx"
    quantize_static(str(fp32), str(p), Reader(cal))  # defaults: QDQ, s8/s8, per-tensor, MinMax, all ops
    out["ORT quantize_static (defaults)"] = p
    p = outdir / "ort_quantize_dynamic.onnx"
    quantize_dynamic(str(fp32), str(p))  # defaults: s8 weights, per-tensor, all supported ops
    out["ORT quantize_dynamic (defaults)"] = p
    return out


def infer(run, feeds, batch=32):
    n = len(next(iter(feeds.values())))
    return np.concatenate([np.asarray(run({k: v[i:i + batch] for k, v in feeds.items()})[0]) for i in range(0, n, batch)])


def runner_for(runtime: str, path: Path, threads: int):
    backend = get_backend(runtime)
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return backend.load(Artifact(runtime=runtime, files=files), threads)


def compare(title: str, sample: dict, result, metric: str, batches: list[int], threads: int, seconds: float,
            rounds: int) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="lathe-bench-"))
    cal = dict(np.load(sample["calibration"]))
    cal.pop("labels", None)
    val_np = dict(np.load(sample["validation"]))
    labels = val_np.pop("labels", None)
    fp32 = Path(result.baseline.artifact)
    models = {"FP32 ONNX Runtime": ("onnxruntime", fp32)}
    w = result.winner_result()
    if w is not None:
        models[f"Lathe pick: {w.name} ({w.runtime})"] = (w.runtime, Path(w.artifact))
    if w is None or w.runtime != "onnxruntime":
        ort_best = [c for c in result.candidates if c.runtime == "onnxruntime" and c.verdict == "passed"]
        if ort_best:
            c = min(ort_best, key=lambda c: c.p50_ms)
            models[f"Lathe best ONNX Runtime candidate: {c.name}"] = ("onnxruntime", Path(c.artifact))
    models.update({k: ("onnxruntime", p) for k, p in plain_quantizers(fp32, cal, tmp).items()})
    if metric == "cosine":  # OpenVINO + NNCF rows of issue 5 (e2e/bench/openvino_rows.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from openvino_rows import openvino_models  # noqa: PLC0415
        models.update(openvino_models(Path(sample["model"]), cal, tmp / "openvino"))
    runners = {k: runner_for(rt, p, threads) for k, (rt, p) in models.items()}
    ref = infer(runners["FP32 ONNX Runtime"], val_np)
    acc = {k: score(infer(r, val_np), ref, labels, metric) for k, r in runners.items()}
    ds = Dataset(Path(sample["validation"]), val_np)
    feeds = {b: ds.batch_of(b) for b in batches}
    ratios = {}
    p50 = {}
    intervals = {}
    for b in batches:
        res = benchmark(runners, {b: feeds[b]}, "FP32 ONNX Runtime", rounds=rounds, seconds=seconds, min_iters=2)
        for k, r in res.items():
            ratios[(k, b)] = r.speedup
            p50[(k, b)] = r.timings[b].p50
            intervals[(k, b)] = (r.latency.low, r.latency.high)
    base_size = fp32.stat().st_size
    label = {"top1": "top-1", "cosine": "mean cosine"}[metric]
    lines = [f"### {title}", "",
             "| model | " + " | ".join(f"speedup b{b} [95%] (p50 ms)" for b in batches) + f" | size ratio | {label} | min cosine |",
             "|---|" + "---|" * (len(batches) + 3)]
    for k, (_, p) in models.items():
        cells = [f"{ratios[(k, b)]:.2f}x [{intervals[(k, b)][0]:.2f}, {intervals[(k, b)][1]:.2f}] ({p50[(k, b)]:.2f})"
                 for b in batches]
        a = acc[k]
        size = p.stat().st_size + (p.with_suffix(".bin").stat().st_size if p.suffix == ".xml" else 0)
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {size / base_size:.2f} | "
                     f"{a[metric]:.4f} | {a['min_cosine']:.4f} |")
    lines.append("")
    return lines


def worker(sample: dict, workdir: Path, batches: list[int], seconds: float, reuse: bool = False) -> tuple[object, float]:
    if reuse and (workdir / "result.json").exists():
        result = WorkerResult.model_validate_json((workdir / "result.json").read_text())
        return result, result.seconds or 0.0
    spec = parse_spec(samples.spec_for(sample, target={"batchSizes": batches}))
    t0 = time.time()
    result = pipeline.run(spec, workdir, bench_seconds=seconds)
    return result, time.time() - t0


def candidates_table(result) -> list[str]:
    lines = ["| candidate | verdict | passes | accuracy | speedup | size ratio | float nodes | reason |",
             "|---|---|---|---|---|---|---|---|"]
    for c in [result.baseline, *result.candidates]:
        acc = f"{c.accuracy:.4f}" if c.accuracy is not None else "–"
        sp = c.speedup_text() or "–"
        sr = f"{c.size_ratio:.2f}" if c.size_ratio else "–"
        lines.append(f"| {c.name}{' ★' if c.name == result.winner else ''} | {c.verdict} | {c.passes} | {acc} | "
                     f"{sp} | {sr} | {len(c.float_nodes)} | {c.reason.replace('|', '/')} |")
    return lines + [""]


def _sample(outdir: Path, kind: str, reuse: bool) -> dict:
    if kind == "digits":
        if reuse and (outdir / "digits32_cnn.pt").exists():
            import torch

            from lathe.worker.intake import torch_args  # noqa: F401

            val = np.load(outdir / "digits32_validation.npz")
            with torch.no_grad():
                top1 = float((torch.jit.load(str(outdir / "digits32_cnn.pt"))(torch.from_numpy(val["input"])).argmax(1).numpy()
                              == val["labels"]).mean())
            return {"model": outdir / "digits32_cnn.pt", "calibration": outdir / "digits32_calibration.npz",
                    "validation": outdir / "digits32_validation.npz", "format": "torchscript", "task": "classification",
                    "inputs": [{"name": "input", "shape": ["batch", 1, 32, 32], "dtype": "float32"}], "top1": top1}
        return samples.make_digits32(outdir)
    if reuse and (outdir / "minilm.onnx").exists():
        return {"model": outdir / "minilm.onnx", "calibration": outdir / "minilm_calibration.npz",
                "validation": outdir / "minilm_validation.npz", "format": "onnx", "task": "embedding",
                "inputs": [{"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int64"},
                           {"name": "attention_mask", "shape": ["batch", "sequence"], "dtype": "int64"}]}
    return samples.make_minilm(outdir, seq=128)


def _cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(isa) or 'no AVX2'})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("cpu_results.md")))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--seconds", type=float, default=30.0, help="benchmark budget per comparison")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--digits-batches", default="1,64", help="batch sizes of the digits run; the first decides")
    ap.add_argument("--reuse", action="store_true", help="reuse samples and worker results already in --workdir")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_ort_logs()
    threads = os.cpu_count() or 1
    root = Path(args.workdir or tempfile.mkdtemp(prefix="lathe-cpu-bench-"))
    t_all = time.time()
    load = os.getloadavg()
    busy = " (other work shares the cores: timings are noisy)" if load[0] > threads / 2 else ""
    out = ["# Lathe CPU benchmark (ONNX Runtime, OpenVINO)", "",
           f"Machine: {platform.machine()} {_cpu_name()}, {threads} cores, threads={threads}; load average at start "
           f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}{busy}. "
           "Speedups are geometric means of paired per-round ratios against FP32 in interleaved rounds, "
           "with 95% intervals (the worker's own statistic).", ""]
    sections = []
    d = _sample(root / "digits", "digits", args.reuse)
    dbatches = [int(b) for b in args.digits_batches.split(",")]
    dres, dsec = worker(d, root / "digits-run", dbatches, 20, args.reuse)
    sections += [f"## Digits CNN, 32x32 (TorchScript, trained in-run, top-1 {d['top1']:.4f}; batch sizes {dbatches}, "
                 f"the first decides)", "",
                 f"Lathe worker run (default candidates, no hand tuning): {dsec:.0f}s, winner **{dres.winner}**.", ""]
    sections += candidates_table(dres)
    sections += compare("Side by side (digits)", d, dres, "top1", dbatches, threads, args.seconds, args.rounds)
    if not args.skip_minilm:
        t0 = time.time()
        m = _sample(root / "minilm", "minilm", args.reuse)
        export_s = time.time() - t0
        mres, msec = worker(m, root / "minilm-run", [1], 30, args.reuse)
        sections += ["## all-MiniLM-L6-v2 (sequence 128, 100 real sentences each for calibration and validation)", "",
                     f"Export {export_s:.0f}s; Lathe worker run (baseline + {len(mres.candidates)} default candidates, "
                     f"benchmark, report): **{msec:.0f}s**, winner **{mres.winner}**.", ""]
        sections += candidates_table(mres)
        sections += compare("Side by side (MiniLM)", m, mres, "cosine", [1, 32], threads, args.seconds, args.rounds)
    out += sections
    out += [f"Total benchmark time {time.time() - t_all:.0f}s.", ""]
    Path(args.out).write_text("\n".join(out))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
