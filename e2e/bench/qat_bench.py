"""QAT vs post-training INT8 on the digits CNN (issue 12 item 7), side by side in one worker run: the same
graph quantized statically after training (PTQ) and trained through the quantizer (QAT, the forgetting
guard's defaults), with structured pruning + INT8 beside them, against the seeds' KPIs (> 2x latency,
< 1% accuracy loss for quantization, < 2% for pruning).

    PYTHONPATH=operator .venv/bin/python e2e/bench/qat_bench.py [--out e2e/bench/qat_results.md] [--threads 1]

Speedups and drops are the worker's own figures (one run, interleaved rounds against FP32, 95% interval)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT / "operator", ROOT):
    sys.path.insert(0, str(p))

from e2e.bench.machine import cpu_name  # noqa: E402
from lathe.api.spec import parse_spec  # noqa: E402
from lathe.worker import pipeline, samples  # noqa: E402

KPI = {"int8-static": 0.01, "int8-qat": 0.01, "pruned-25-int8": 0.02}
CANDIDATES = [
    {"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static", "perChannel": True,
                                        "activationType": "uint8", "weightType": "int8"}]},
    {"name": "int8-qat", "passes": [{"type": "quantize", "precision": "int8", "mode": "qat", "perChannel": True,
                                     "activationType": "uint8", "weightType": "int8"}]},
    {"name": "pruned-25-int8", "passes": [{"type": "prune", "method": "structured", "sparsity": 0.25},
                                          {"type": "quantize", "precision": "int8", "mode": "static",
                                           "perChannel": True}]},
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("qat_results.md")))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lathe-qat-bench-"))
    sample = samples.make_digits(work / "sample")
    spec = parse_spec(samples.spec_for(sample, training=True, candidates=CANDIDATES,
                                       target={"batchSizes": [1, 64], "threads": a.threads},
                                       budget={"maxAccuracyDrop": 0.02, "minSpeedup": 0}))
    res = pipeline.run(spec, work / "run")
    details = json.loads((work / "run" / "details.json").read_text())
    base = res.baseline
    lines = [
        "# QAT vs PTQ on the digits CNN (worker run, CPU)",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `e2e/bench/qat_bench.py` on {platform.machine()} "
        f"({os.cpu_count()} cores, {cpu_name()}, {a.threads} thread(s) for training and benchmark, load average "
        f"{os.getloadavg()[0]:.1f} at the end). Model: the 8x8 digits CNN of `worker/samples.py` (its training, "
        f"calibration and validation sets); baseline top-1 {base.accuracy:.4f}, "
        f"p50 {base.p50_ms:.3f} ms at batch 1. Worker run {res.seconds:.0f} s.",
        "",
        "| candidate | top-1 | drop | speedup b1 (95% interval) | KPI drop | > 2x and within KPI | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in res.candidates:
        kpi = KPI.get(c.name)
        met = (c.speedup or 0) > 2 and c.accuracy_drop is not None and c.accuracy_drop < kpi
        lines.append(f"| {c.name} | {c.accuracy:.4f} | {c.accuracy_drop:+.4f} | {c.speedup_text()} | < {kpi:.0%} | "
                     f"{'yes' if met else 'no'} | {c.verdict} |")
    training = details["candidates"].get("int8-qat", {}).get("training")
    if training:
        lines += ["", "QAT epochs (held-out split of the training data, fake-quantized):", "",
                  "```", json.dumps(training, indent=1)[:1500], "```"]
    lines.append("")
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
