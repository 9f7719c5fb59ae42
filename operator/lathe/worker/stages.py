"""What every task's stages share (the generic Pipeline in pipeline.py, task causal-lm's LlmPipeline in
llm/pipeline.py): the state a run carries, the build loop a split search hooks its hand-over into, run() as
prepare -> build_all -> finish, and the selection and result every task writes (`assemble`)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api.spec import Candidate, ModelOptimizationSpec, metric_of
from ..api.status import CandidateResult, TieBreak, WorkerResult
from ..evaluate.select import choose, material_drop, pareto
from .progress import Progress, ProgressFn

log = logging.getLogger("lathe.worker")

BENCH_SECONDS = float(os.environ.get("LATHE_BENCH_SECONDS", "30"))
# Rounds are paired samples of the speedup: ten halve the interval of five for the same seconds.
BENCH_ROUNDS = int(os.environ.get("LATHE_BENCH_ROUNDS", "10"))


@dataclass
class Built:
    result: CandidateResult
    artifact: Any = None
    runner: Any = None
    details: dict[str, Any] = field(default_factory=dict)


class Stages:
    """Subclasses give prepare() (setting all_candidates), build_one(cand), finish(base, built, t0), reload(runtime,
    artifact) and environment()."""

    def __init__(self, spec: ModelOptimizationSpec, workdir: Path, progress: ProgressFn | None = None,
                 bench_seconds: float | None = None, bench_rounds: int | None = None):
        self.spec = spec
        self.workdir = Path(workdir)
        self.progress = Progress(progress)
        self.threads = spec.target.threads or (os.cpu_count() or 1)
        self.metric = str(metric_of(spec))
        self.bench_seconds = BENCH_SECONDS if bench_seconds is None else bench_seconds
        self.bench_rounds = bench_rounds or BENCH_ROUNDS
        self.warnings: list[str] = []
        self.details: dict[str, Any] = {"candidates": {}}
        self.speedup_basis = ""  # what the speedups are ratios of: set by the benchmark

    def fresh_workdir(self, name: str) -> Path:
        """workdir/candidates/<name>/work, emptied of an earlier build of that name (the candidate's folder is
        its parent: what it builds lands there, the work folder goes once it is built)."""
        cdir = self.workdir / "candidates" / name
        if cdir.exists():
            shutil.rmtree(cdir)
        work = cdir / "work"
        work.mkdir(parents=True)
        return work

    def for_handover(self, b: Built) -> Built:
        """`b` as a build Job hands it over (worker/handover.py): its files under workdir/candidates/<name>."""
        return b

    def build_all(self, cands: list[Candidate], done=None) -> list[Built]:
        """Build and validate `cands` in order; `done(built)` after each (a build Job hands it over there)."""
        built: list[Built] = []
        for i, cand in enumerate(cands):
            self.progress("candidates", i / len(cands), f"building {cand.name}")
            b = self.build_one(cand)
            log.info("candidate %s built: %s", cand.name, b.result.verdict)
            if done is not None:
                done(self.for_handover(b))
            built.append(b)
        self.progress("candidates", 1.0)
        return built

    def run(self) -> WorkerResult:
        t0 = time.time()
        base = self.prepare()
        return self.finish(base, self.build_all(self.all_candidates), t0)


def assemble(pipe, base: Built, built: list[Built], t0: float, tie_break: TieBreak | None = None) -> WorkerResult:
    """The selection among the gated candidates and the result every task writes (`pipe`: a Pipeline or the
    causal-LM LlmPipeline). A tie on speed goes to a drop smaller by a material share of the budget."""
    results = [b.result for b in built]
    chosen = choose(results, str(pipe.spec.objective), material_drop(pipe.budget, base.result.accuracy))
    selection = chosen.reason + (f" (after {tie_break.summary()})" if tie_break is not None else "")
    if chosen.winner is not None:
        w = next(c for c in results if c.name == chosen.winner)
        w.reason = f"{w.reason}; selected: {selection}"
    return WorkerResult(metric=pipe.metric, baseline=base.result, candidates=results, winner=chosen.winner,
                        pareto=pareto([base.result] + results, pipe.metric), selection=selection,
                        speedup_basis=pipe.speedup_basis, tie_break=tie_break,
                        warnings=list(dict.fromkeys(pipe.warnings)), environment=pipe.environment(),
                        report=str(pipe.workdir / "result.json"), html_report=str(pipe.workdir / "report.html"),
                        seconds=round(time.time() - t0, 1))
