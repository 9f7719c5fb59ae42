"""Publishing a candidate as version N+1 of a model in a Triton model repository: one publisher over one
storage layer, a folder (a path or pvc://claim/path: serving/folder_repository.py) or an object store
(s3://, gs://, az://: serving/object_repository.py), the same layout and guarantees on each.

Layout written for model `m`, version `N`:
    <repo>/m/config.pbtxt            shared by all versions (IO, batching, instances, version_policy)
    <repo>/m/N/<model files>         model.onnx | model.plan | model_sm80.plan ... | model.py
                                     | an onnxruntime-genai model folder's files (flavour genai)
    <repo>/m/N/lathe.json            candidate, flavour, sha256 of every file, created time
    <repo>/m/N/report.json           the validation report (when given)

A version is built outside the repository (serving/staging.py), then made visible whole as a number no
other publisher holds; an existing version is never written to. `config.pbtxt`'s version_policy keeps
the versions being served: loading N+1 is Triton control's job (`serving.triton`), not the writer's.
Module map: serving -> storage, never back; staging.py knows no store, the two writers know staging.py,
this module knows the three.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from lathe.api.spec import Publish
from lathe.api.status import Published
from lathe.storage.clients import is_object_uri
from lathe.storage.paths import check_name

from .config import ConfigError
from .folder_repository import (
    FolderRepository,
    model_folder,
    read_meta,
    rename_noreplace,
    resolve_repository,
    verify,
    versions,
    write_atomic,
)
from .object_repository import ObjectRepository
from .staging import Identity, PublishError, Staged, identify, next_config, sha256_file, stage_version


def repository_store(repository: str | os.PathLike, client=None) -> FolderRepository | ObjectRepository:
    """The writer for a repository location: an object store for s3://, gs://, az://, else a folder."""
    if is_object_uri(str(repository)):
        return ObjectRepository(str(repository), client)
    return FolderRepository(repository)


def publish(repository: str | os.PathLike, model_name: str, artifact_files: Sequence[str | os.PathLike]
            | Mapping[str, str | os.PathLike] | str | os.PathLike, runtime: str, publish_spec: Publish | None,
            candidate_name: str, report_path: str | os.PathLike | None = None, *,
            flavour: str | None = None, reuse_existing: bool = True, client=None) -> Published:
    """Write the candidate as version max(existing)+1 of `model_name` in the Triton repository.

    artifact_files: the model file(s): an .onnx for onnxruntime/python; .plan engines (+ the source .onnx for
    the signature) for tensorrt; a mapping {name: path} when names matter (model_sm80.plan ...).
    runtime: the candidate's runtime (onnxruntime/openvino/tensorrt) — picks the flavour when the spec says auto.
    reuse_existing: a version already holding the same candidate and artifact sha256 is returned instead of
    publishing a duplicate (an operator restarted between publish and status write must not add N+2); it is
    looked for before anything is copied. client: an object-store client with settings of its own.
    """
    check_name(model_name, "spec.publish.modelName")  # before anything is staged, on every store
    spec = publish_spec or Publish(repository=str(repository), model_name=model_name)
    ident = identify(artifact_files, runtime, spec, flavour)
    store = repository_store(repository, client)
    if reuse_existing:
        found = store.existing(model_name, ident, candidate_name)
        if found is not None:
            return found
    with store.staging(model_name) as stage:
        st = stage_version(stage, model_name, ident, runtime, spec, candidate_name, report_path)
        return store.commit(model_name, st, candidate_name)


__all__ = ["publish", "repository_store", "PublishError", "ConfigError", "resolve_repository", "model_folder",
           "versions", "read_meta", "verify", "sha256_file", "rename_noreplace", "write_atomic", "Identity", "Staged",
           "identify", "next_config", "stage_version"]
