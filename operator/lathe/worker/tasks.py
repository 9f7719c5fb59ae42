"""Which stages run a spec: the generic Pipeline (worker/pipeline.py) or, for task causal-lm, the LlmPipeline
(worker/llm/pipeline.py). Both offer the same stages (prepare, all_candidates, build_all, reload, finish), so a
single Job (`run`) and a search split over build Jobs (shard_run.py) drive either."""

from __future__ import annotations

from pathlib import Path

from lathe.api.spec import ModelOptimizationSpec, TaskType
from lathe.api.status import WorkerResult

from .progress import ProgressFn


def pipeline_for(spec: ModelOptimizationSpec, workdir: Path, progress: ProgressFn | None = None,
                 bench_seconds: float | None = None, bench_rounds: int | None = None):
    if spec.task.type == TaskType.causal_lm:
        from .llm.pipeline import LlmPipeline  # noqa: PLC0415 - transformers and the genai runtime

        return LlmPipeline(spec, workdir, progress, bench_seconds, bench_rounds)
    from .pipeline import Pipeline  # noqa: PLC0415 - torch, ONNX Runtime

    return Pipeline(spec, workdir, progress, bench_seconds, bench_rounds)


def run(spec: ModelOptimizationSpec, workdir: Path, progress: ProgressFn | None = None, *,
        bench_seconds: float | None = None, bench_rounds: int | None = None) -> WorkerResult:
    """The whole worker in one Job: writes result.json, details.json, report.html and the candidates' artifacts
    under `workdir`. Raises InvalidInput for bad model/data/spec, WorkerError otherwise."""
    return pipeline_for(spec, workdir, progress, bench_seconds, bench_rounds).run()
