"""The worker's last step: publish the winner as the next version in the Triton repository.

Runs where the artifacts are (the Job pod, or `lathe run` locally); the operator only reads the
result. Nothing is published when no candidate met the budget. One architecture's build Job
(LATHE_GPU_ARCH, spec.target.gpu.architectures) does not publish: it keeps the engine of every
candidate that passed there for the operator's publish Job (serving/architectures.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import Published, WorkerResult

from .errors import WorkerError

log = logging.getLogger("lathe.worker.publish")


def artifact_files(path: Path) -> list[Path] | dict[str, Path]:
    """The files a runtime loads: OpenVINO IR is model.xml plus its weights in model.bin; an onnxruntime-genai
    model is a folder (model.onnx, model.onnx.data, genai_config.json, tokenizer files), passed as {name: path}."""
    if path.is_dir():
        from .llm.export import NOT_MODEL_FILES

        return {f.name: f for f in sorted(path.iterdir()) if f.is_file() and f.name not in NOT_MODEL_FILES}
    files = [path]
    if path.suffix == ".xml" and path.with_suffix(".bin").exists():
        files.append(path.with_suffix(".bin"))
    return files


def publish_winner(spec: ModelOptimizationSpec, result: WorkerResult, workdir: Path) -> Published | None:
    winner = result.winner_result()
    if spec.publish is None or winner is None:
        return None
    if not winner.artifact:
        raise WorkerError("publish", f"winner {winner.name} has no artifact to publish")
    from lathe.serving.repository import PublishError, publish
    from lathe.storage import StorageError
    from lathe.storage.paths import PathRefused

    from .errors import InvalidInput

    try:
        published = publish(spec.publish.repository, spec.publish.model_name,
                            artifact_files(Path(winner.artifact)), winner.runtime, spec.publish, winner.name,
                            report_path=result.report)
    except StorageError as e:  # a store that refuses us or is gone: the user's to fix, not a crash to retry
        raise InvalidInput("publish", f"publishing {winner.name} to {spec.publish.repository} failed: {e}",
                           kind=e.reason) from e
    except PathRefused as e:  # a name or path that leaves the repository (worker.locations checks it first)
        raise InvalidInput("publish", f"publishing {winner.name} to {spec.publish.repository} refused: {e}") from e
    except (PublishError, OSError, ValueError) as e:
        raise WorkerError("publish", f"publishing {winner.name} to {spec.publish.repository} failed: {e}") from e
    log.info("published %s as %s version %d (%s)", winner.name, published.model_name, published.version,
             published.flavour)
    result.published = published
    if result.report:  # keep the full JSON in step with the summary
        Path(result.report).write_text(result.model_dump_json(by_alias=True, indent=2))
    return published


def keep_architecture_engines(spec: ModelOptimizationSpec, result: WorkerResult, compute_capability: str) -> list[Path]:
    """Every passed tensorrt candidate's engine and the graph it was built from, kept under spec.artifacts for
    the publish Job, which publishes the one the operator chooses across architectures (its winner here may not
    be the one that passes everywhere). Returns the folders written."""
    from lathe.api.status import Verdict
    from lathe.serving.architectures import keep_engine
    from lathe.serving.repository import PublishError
    from lathe.storage.paths import PathRefused

    from .errors import InvalidInput

    resource, generation = os.environ.get("LATHE_RESOURCE", ""), int(os.environ.get("LATHE_GENERATION") or 1)
    kept = []
    for c in result.candidates:
        if c.runtime != "tensorrt" or c.verdict != Verdict.passed or not c.artifact:
            continue
        engine = Path(c.artifact)
        source = engine.parent / "graph.onnx"  # pipeline._tensorrt keeps it beside the engine
        try:
            kept.append(keep_engine(spec, resource, generation, compute_capability, c.name, engine, source))
        except (PublishError, PathRefused) as e:  # spec.artifacts missing, unusable or leaving its claim
            raise InvalidInput("publish", f"keeping {c.name}'s sm{compute_capability} engine failed: {e}") from e
        except OSError as e:
            raise WorkerError("publish", f"keeping {c.name}'s sm{compute_capability} engine failed: {e}") from e
        log.info("kept %s's engine for compute capability %s in %s", c.name, compute_capability, kept[-1])
    return kept


def check_architecture(compute_capability: str, visible: str | None) -> None:
    """The Job was placed by GPU feature discovery's labels: a GPU of another compute capability would build an
    engine the publish Job files under the wrong one (bad input: a retry lands on the same node)."""
    from .errors import InvalidInput

    if visible is not None and visible != compute_capability:
        raise InvalidInput("intake", f"this Job builds for compute capability {compute_capability} "
                                     f"(LATHE_GPU_ARCH) but its GPU is {visible}: check the node's "
                                     "nvidia.com/gpu.compute.major/minor labels")
