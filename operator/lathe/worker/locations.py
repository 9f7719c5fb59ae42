"""Before any work: every folder the worker will write (the Triton model folder under
spec.publish.repository, the report folder under spec.artifacts) is resolved where it is mounted and
refused when it would leave its claim or folder, a symlink included (storage.paths). The spec's types
refuse the malformed ones already (the API server too); what only the files can tell (a symlink inside a
claim that points out of it) is found here, at once, instead of after the whole search."""

from __future__ import annotations

from lathe.api.spec import ModelOptimizationSpec
from lathe.storage.paths import PathRefused, check_name, split_location

from .errors import InvalidInput, WorkerError


def check_written(spec: ModelOptimizationSpec) -> None:
    """InvalidInput (stage "spec") naming the field when a written location leaves its claim or folder."""
    from lathe.serving.repository import PublishError, model_folder, resolve_repository  # noqa: PLC0415

    from .keep_report import artifacts_dir, subfolder  # noqa: PLC0415

    if spec.publish is not None:
        pub = spec.publish
        try:
            check_name(pub.model_name, "spec.publish.modelName")
        except PathRefused as e:
            raise InvalidInput("spec", str(e)) from e
        if split_location(pub.repository)[0] in ("file", "pvc"):
            try:
                repo = resolve_repository(pub.repository)
            except PublishError:
                repo = None  # not a form the publisher writes: validation and the publisher say so
            except PathRefused as e:
                raise InvalidInput("spec", f"spec.publish.repository: {e}") from e
            if repo is not None:
                try:
                    model_folder(repo, pub.model_name)
                except PathRefused as e:
                    raise InvalidInput("spec", str(e)) from e
    if spec.artifacts and split_location(spec.artifacts)[0] in ("file", "pvc"):
        try:
            artifacts_dir(spec.artifacts, subfolder())
        except InvalidInput:
            raise  # leaves its claim or folder: named spec.artifacts
        except WorkerError:
            pass  # a location that cannot be written costs a warning when the report is kept, as always
