"""`lathe run`: the whole worker chain on this machine, no cluster. Without a file it runs the
embedded example: a small CNN trained on scikit-learn's digits (seconds), optimized for this CPU,
and published to a local Triton model repository under the output folder."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import CandidateResult, WorkerResult


def embedded_spec(out: Path) -> dict:
    from lathe.worker.samples import make_digits, spec_for

    print(f"lathe run: no resource given; training the embedded digits CNN into {out / 'inputs'} ...", flush=True)
    sample = make_digits(out / "inputs")
    print(f"lathe run: trained, validation top-1 {sample['top1']:.3f}", flush=True)
    return spec_for(sample, target={"batchSizes": [1, 64]},
                    publish={"repository": str(out / "triton-repository"), "modelName": "digits", "flavour": "python"})


def load_spec(file: str) -> dict:
    doc = yaml.safe_load(Path(file).read_text())
    if not isinstance(doc, dict):
        raise SystemExit(f"{file}: not a YAML mapping")
    if doc.get("kind") == "ModelOptimization":
        return doc.get("spec") or {}
    return doc


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def table(result: WorkerResult) -> str:
    rows = [("candidate", "runtime", "verdict", result.metric, "drop", "p50 ms", "p99 ms", "speedup", "size MB",
             "reason")]

    def row(c: CandidateResult):
        return (c.name + (" *" if c.name == result.winner else ""), c.runtime, c.verdict, _fmt(c.accuracy),
                _fmt(c.accuracy_drop), _fmt(c.p50_ms, ".3f"), _fmt(c.p99_ms, ".3f"),
                "-" if c.speedup is None else f"{c.speedup:.2f}x",
                "-" if c.size_bytes is None else f"{c.size_bytes / 1e6:.2f}", c.reason[:70])

    rows += [row(result.baseline)] + [row(c) for c in result.candidates]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def run_local(file: str | None, out: Path, quick: bool = False) -> int:
    from lathe.worker.errors import InvalidInput, WorkerError
    from lathe.worker.pipeline import run
    from lathe.worker.publish_step import publish_winner

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    obj = embedded_spec(out) if file is None else load_spec(file)
    try:
        spec = ModelOptimizationSpec.model_validate(obj)
    except ValueError as e:
        print(f"lathe run: invalid spec:\n{e}", file=sys.stderr)
        return 2
    from lathe.controller.validate import problems

    found = problems(spec)
    if found:
        print("lathe run: invalid spec:\n  " + "\n  ".join(found), file=sys.stderr)
        return 2
    try:
        result = run(spec, out, bench_rounds=3 if quick else None)
        published = publish_winner(spec, result, out)
    except InvalidInput as e:
        print(f"lathe run: bad input at {e.stage}: {e.message}", file=sys.stderr)
        return 2
    except WorkerError as e:
        print(f"lathe run: failed at {e.stage}: {e.message}", file=sys.stderr)
        return 1
    print()
    print(table(result))
    print()
    if result.winner:
        w = result.winner_result()
        print(f"winner: {w.name} — {w.speedup:.2f}x faster than the baseline, {result.metric} drop "
              f"{w.accuracy_drop:.4f}, {w.size_bytes / 1e6:.2f} MB")
    else:
        print("no candidate met the budget: nothing would be published")
    if published:
        print(f"published: {published.model_name} version {published.version} ({published.flavour}) in "
              f"{published.repository}")
    (out / "summary.json").write_text(json.dumps(json.loads(result.compact()), indent=2))
    print(f"report: {result.html_report}  full result: {result.report}  ({time.monotonic() - t0:.0f}s)")
    return 0
