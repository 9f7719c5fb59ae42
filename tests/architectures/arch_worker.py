"""A stand-in for one architecture's build worker (LATHE_GPU_ARCH set), for the hand-over test.

It does what the real worker must do on a GPU node, without a GPU: report its candidates and, for each
one that passed, keep a PLACEHOLDER `.plan` (bytes naming the architecture, not an engine) and the
source graph through lathe.serving.architectures.keep_engine. The verdicts and speedups per
architecture come from the JSON file the spec names as model uri: {"8.9": {"fp16": [verdict, speedup]}}."""

import json
import os
import sys
from pathlib import Path

from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import CandidateResult, WorkerResult
from lathe.serving.architectures import keep_engine

spec = ModelOptimizationSpec.model_validate_json(os.environ["LATHE_SPEC"])
args = sys.argv[1:]
term, work = args[args.index("--termination-log") + 1], Path(args[args.index("--workdir") + 1])
cc = os.environ["LATHE_GPU_ARCH"]
script = json.loads(Path(spec.model.uri).read_text())[cc]
source = Path(spec.model.uri).with_name("graph.onnx")
cands = []
for name, (verdict, speedup) in script.items():
    cands.append(CandidateResult(name=name, runtime="tensorrt", verdict=verdict, speedup=speedup,
                                 reason="" if verdict == "passed" else "scripted rejection"))
    if verdict == "passed":
        plan = work / f"{name}.plan"
        plan.write_bytes(f"PLACEHOLDER engine of {name} for {cc}".encode())
        keep_engine(spec, os.environ["LATHE_RESOURCE"], int(os.environ["LATHE_GENERATION"]), cc, name, plan, source)
best = max((c for c in cands if c.verdict == "passed"), key=lambda c: c.speedup, default=None)
result = WorkerResult(metric="top1", baseline=CandidateResult(name="baseline", verdict="baseline"), candidates=cands,
                      winner=best.name if best else None)
Path(term).write_text(result.compact())
print(f"architecture {cc}: kept {[c.name for c in cands if c.verdict == 'passed']}", flush=True)
