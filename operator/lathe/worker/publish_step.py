"""The worker's last step: publish the winner as the next version in the Triton repository.

Runs where the artifacts are (the Job pod, or `lathe run` locally); the operator only reads the
result. Nothing is published when no candidate met the budget."""

from __future__ import annotations

import logging
from pathlib import Path

from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import Published, WorkerResult

from .errors import WorkerError

log = logging.getLogger("lathe.worker.publish")


def artifact_files(path: Path) -> list[Path]:
    """The files a runtime loads: OpenVINO IR is model.xml plus its weights in model.bin."""
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

    from .errors import InvalidInput

    try:
        published = publish(spec.publish.repository, spec.publish.model_name,
                            artifact_files(Path(winner.artifact)), winner.runtime, spec.publish, winner.name,
                            report_path=result.report)
    except StorageError as e:  # a store that refuses us or is gone: the user's to fix, not a crash to retry
        raise InvalidInput("publish", f"publishing {winner.name} to {spec.publish.repository} failed: {e}",
                           kind=e.reason) from e
    except (PublishError, OSError, ValueError) as e:
        raise WorkerError("publish", f"publishing {winner.name} to {spec.publish.repository} failed: {e}") from e
    log.info("published %s as %s version %d (%s)", winner.name, published.model_name, published.version,
             published.flavour)
    result.published = published
    if result.report:  # keep the full JSON in step with the summary
        Path(result.report).write_text(result.model_dump_json(by_alias=True, indent=2))
    return published
