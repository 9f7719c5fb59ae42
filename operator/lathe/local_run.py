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
from lathe.evaluate.table import table, verdict_line


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


def run_local(file: str | None, out: Path, quick: bool = False) -> int:
    from lathe.worker.errors import InvalidInput, WorkerError
    from lathe.worker.keep_report import keep
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
        keep(spec, result, out)
    except InvalidInput as e:
        print(f"lathe run: bad input at {e.stage}: {e.message}", file=sys.stderr)
        return 2
    except WorkerError as e:
        print(f"lathe run: failed at {e.stage}: {e.message}", file=sys.stderr)
        return 1
    print()
    print(table(result))
    print()
    print(verdict_line(result))
    if published:
        print(f"published: {published.model_name} version {published.version} ({published.flavour}) in "
              f"{published.repository}")
    (out / "summary.json").write_text(json.dumps(json.loads(result.compact()), indent=2))
    print(f"report: {result.html_report}  full result: {result.report}  ({time.monotonic() - t0:.0f}s)")
    return 0
