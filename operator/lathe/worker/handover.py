"""The hand-over of a search split into build Jobs (spec.search.parallelism): where each build Job puts what
it built, and how the benchmark Job reads it back. Generic: a list of candidate names, and per candidate
a folder of files with a record (`candidate.json`) of what the worker measured.

Layout under spec.artifacts (a path on shared storage, pvc://claim/path, or an s3://, gs:// or az:// prefix)::

    <artifacts>/<namespace>/<name>/generation-<n>/[sm<CC>/]shards/shard-<k>/
        <candidate>/candidate.json      the CandidateResult, runtime, artifact files, meta, details
        <candidate>/<artifact files>    model.onnx, model.xml + model.bin, model.plan + graph.onnx, ...
        manifest.json                   written last: the shard is complete

A candidate's folder is written whole or not at all (a folder renamed in; on an object store its record uploaded last),
so a retried build Job reuses the candidates its killed attempt finished, and a reader never sees half of
one. Every file's sha256 is recorded and checked when read back."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lathe.api.spec import ModelOptimizationSpec
from lathe.storage import sha256_file

from .errors import InvalidInput, WorkerError

log = logging.getLogger("lathe.worker.handover")
RECORD, MANIFEST, FORMAT = "candidate.json", "manifest.json", 1


def base_uri(spec: ModelOptimizationSpec, resource: str, generation: int, architecture: str | None = None) -> str:
    """Where this generation's shards are handed over, as the user wrote spec.artifacts."""
    if not spec.artifacts:
        raise InvalidInput("handover", "spec.artifacts is required with spec.search.parallelism > 1: the build Jobs "
                                       "hand their candidates to the benchmark Job there")
    if not resource or "/" not in resource:
        raise InvalidInput("handover", f"LATHE_RESOURCE {resource!r}: want namespace/name (set by the operator)")
    arch = f"/sm{architecture.replace('.', '')}" if architecture else ""
    return f"{spec.artifacts.rstrip('/')}/{resource}/generation-{generation}{arch}/shards"


class Store:
    """A folder tree under one location: a local path (a mounted claim) or an object-store prefix (s3://,
    gs://, az://)."""

    def __init__(self, uri: str):
        from lathe.storage.clients import client_for_uri, is_object_uri  # noqa: PLC0415

        self.uri = uri.rstrip("/")
        self.s3 = is_object_uri(self.uri)  # any object store: one client serves the three
        if self.s3:
            self.client, self.bucket, self.prefix = client_for_uri(self.uri + "/")
        else:
            from .keep_report import artifacts_dir  # noqa: PLC0415

            self.root = artifacts_dir(self.uri)

    def where(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def _key(self, key: str) -> str:
        return "/".join(part for part in (self.prefix.strip("/"), key.strip("/")) if part)

    def read_text(self, key: str) -> str | None:
        if self.s3:
            from lathe.storage import StorageError  # noqa: PLC0415

            try:
                return self.client.get_bytes(self.bucket, self._key(key)).decode()
            except StorageError as e:
                if e.reason == "StorageNotFound":
                    return None
                raise
        path = self.root / key
        return path.read_text() if path.is_file() else None

    def write_text(self, key: str, text: str) -> None:
        if self.s3:
            self.client.put_bytes(self.bucket, self._key(key), text.encode())
            return
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        tmp.write_text(text)
        os.replace(tmp, path)

    def put_folder(self, local: Path, key: str, last: str) -> None:
        """`local`'s files under `key`, whole: `last` (the record) is what makes it visible to a reader."""
        files = sorted(p for p in local.rglob("*") if p.is_file())
        if self.s3:
            for f in sorted(files, key=lambda f: f.name == last):
                self.client.upload(self.bucket, self._key(f"{key}/{f.relative_to(local).as_posix()}"), f)
            return
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(local, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)

    def get_folder(self, key: str, local: Path, names: list[str]) -> None:
        local.mkdir(parents=True, exist_ok=True)
        for name in names:
            if ".." in Path(name).parts or Path(name).is_absolute():
                raise WorkerError("handover", f"{self.where(key)}: refusing file name {name!r}")
            dest = local / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if self.s3:
                from lathe.storage import max_download_bytes  # noqa: PLC0415

                self.client.download(self.bucket, self._key(f"{key}/{name}"), dest, max_bytes=max_download_bytes())
            else:
                shutil.copyfile(self.root / key / name, dest)

    def remove(self, key: str) -> None:
        if self.s3:
            objs, _ = self.client.list(self.bucket, self._key(key) + "/")
            for obj in objs:
                self.client.delete(self.bucket, obj.key)
            return
        shutil.rmtree(self.root / key, ignore_errors=True)

    def folders(self, key: str) -> Iterator[str]:
        """Names of the folders directly under `key` (local), or of the prefixes (object store)."""
        if self.s3:
            prefix = self._key(key) + "/"
            _, prefixes = self.client.list(self.bucket, prefix, delimiter="/")
            yield from sorted(p[len(prefix):].rstrip("/") for p in prefixes)
            return
        path = self.root / key
        if path.is_dir():
            yield from sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass
class Record:
    """One candidate as a build Job handed it over."""
    result: dict[str, Any]  # CandidateResult, by alias
    runtime: str
    files: list[str]  # every file of the candidate's folder, relative to it
    artifact_files: list[str]  # the files the runtime loads, main file first (Artifact.files); empty: nothing built
    meta: dict[str, Any]
    details: dict[str, Any]
    runnable: bool  # the worker could run it (benchmark it); False: judged without a runner (failed, emulated only)
    sha256: dict[str, str]
    artifact: str | None = None  # CandidateResult.artifact, relative to the folder

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> Record:
        doc = json.loads(text)
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


def shard_key(shard: int) -> str:
    return f"shard-{shard}"


def put_candidate(store: Store, shard: int, built, cdir: Path) -> Record:
    """Hand over one built candidate (`built`: stages.Built; `cdir`: its folder in the workdir)."""
    res = built.result
    files: list[str] = []
    if cdir.is_dir():
        files = sorted(p.relative_to(cdir).as_posix() for p in cdir.rglob("*")
                       if p.is_file() and p.relative_to(cdir).parts[0] != "work")
    art = built.artifact
    artifact_files = [Path(f).relative_to(cdir).as_posix() for f in art.files] if art is not None else []
    rel_artifact = None
    if res.artifact and Path(res.artifact).is_relative_to(cdir):
        rel_artifact = Path(res.artifact).relative_to(cdir).as_posix()
    rec = Record(result=res.model_dump(by_alias=True, mode="json"), runtime=res.runtime or "onnxruntime",
                 files=files, artifact_files=artifact_files, meta=dict(art.meta) if art is not None else {},
                 details=built.details, runnable=built.runner is not None,
                 sha256={f: sha256_file(cdir / f) for f in files}, artifact=rel_artifact)
    staging = cdir.parent / f".{cdir.name}.handover"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in files:
        (staging / f).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(cdir / f, staging / f)  # the same filesystem: no copy
        except OSError:
            shutil.copyfile(cdir / f, staging / f)
    (staging / RECORD).write_text(rec.to_json())
    try:
        store.put_folder(staging, f"{shard_key(shard)}/{res.name}", RECORD)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rec


def get_record(store: Store, shard: int, name: str) -> Record | None:
    text = store.read_text(f"{shard_key(shard)}/{name}/{RECORD}")
    if text is None:
        return None
    try:
        return Record.from_json(text)
    except (ValueError, TypeError) as e:
        log.warning("unreadable hand-over record of %s in shard %d: %s", name, shard, e)
        return None


def fetch_candidate(store: Store, shard: int, rec: Record, cdir: Path) -> None:
    """The candidate's files into `cdir`, each checked against the sha256 its build Job recorded."""
    name = rec.result["name"]
    shutil.rmtree(cdir, ignore_errors=True)
    store.get_folder(f"{shard_key(shard)}/{name}", cdir, rec.files)
    for f, want in rec.sha256.items():
        got = sha256_file(cdir / f)
        if got != want:
            raise WorkerError("handover", f"{store.where(shard_key(shard))}/{name}/{f}: sha256 {got} is not the "
                                          f"{want} its build Job recorded")


def put_manifest(store: Store, shard: int, shards: int, architecture: str | None, all_names: list[str],
                 mine: list[str], baseline: dict[str, Any], seconds: float) -> None:
    doc = {"format": FORMAT, "shard": shard, "shards": shards, "architecture": architecture, "all": all_names,
           "candidates": mine, "baseline": baseline, "seconds": round(seconds, 1)}
    store.write_text(f"{shard_key(shard)}/{MANIFEST}", json.dumps(doc, indent=1))


def get_manifest(store: Store, shard: int) -> dict[str, Any] | None:
    text = store.read_text(f"{shard_key(shard)}/{MANIFEST}")
    return None if text is None else json.loads(text)
