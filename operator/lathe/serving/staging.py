"""A version built outside any repository, store-independent: what a candidate is known by (Identity:
its files and the main one's sha256), the version folder staged locally (Staged: files, generated
model code, report, lathe.json with every file's sha256) and the config.pbtxt it needs once it is in
(next_config). The folder and object-store writers (folder_repository.py, object_repository.py) make
such a version visible; serving/repository.py's publish() drives them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lathe.api.spec import Publish

from .config import (
    ConfigOptions,
    Flavour,
    check_config,
    config_versions,
    flavour_for,
    io_compatible,
    io_of,
    widen,
)


class PublishError(RuntimeError):
    pass


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()



def _link_or_copy(src: Path, dst: Path) -> None:
    shutil.copy2(src, dst)


def _normalise(artifact_files) -> dict[str, Path]:
    if isinstance(artifact_files, (str, os.PathLike)):
        artifact_files = [artifact_files]
    if isinstance(artifact_files, Mapping):
        items = {str(k): Path(v) for k, v in artifact_files.items()}
    else:
        items = {Path(p).name: Path(p) for p in artifact_files}
    for n, p in items.items():
        if not p.is_file() and not (p.is_dir() and len(items) == 1):  # a model folder (flavour genai) comes alone
            raise PublishError(f"artifact {n!r} not found: {p}")
    return items


@dataclass
class Staged:
    """A version built in a local folder, ready to be made visible as N+1 (files, lathe.json, report)."""
    dir: Path
    flavour: Flavour
    signature: object
    options: ConfigOptions
    files: dict[str, Path]
    digest: str


@dataclass(frozen=True)
class Identity:
    """What a candidate's version is known by before anything is copied: its files and the main one's sha256
    (a version holding the same candidate and digest is reused, not published again)."""
    flavour: Flavour
    artifacts: dict[str, Path]
    files: dict[str, Path]
    main_file: str
    digest: str


def identify(artifact_files, runtime: str, spec: Publish, flavour: str | None) -> Identity:
    fl = flavour_for(flavour or spec.flavour, runtime)
    arts = _normalise(artifact_files)
    files = fl.files(arts)
    main_file = next(n for n in files if n.startswith("model"))
    if getattr(fl, "digest_all_files", False):  # a model folder: the weights may change without the graph
        h = hashlib.sha256()
        for n in sorted(files):
            h.update(f"{n}\0{sha256_file(files[n])}\n".encode())
        return Identity(fl, arts, files, main_file, h.hexdigest())
    return Identity(fl, arts, files, main_file, sha256_file(files[main_file]))


def stage_version(into: Path, model_name: str, ident: Identity, runtime: str, spec: Publish, candidate_name: str,
                  report_path: str | os.PathLike | None) -> Staged:
    fl, files, main_file, digest = ident.flavour, ident.files, ident.main_file, ident.digest
    sig = fl.signature(ident.artifacts, files)
    vstage = into / "version"
    vstage.mkdir()
    for name, src in files.items():
        _link_or_copy(src, vstage / name)
    opts = ConfigOptions(max_batch_size=spec.max_batch_size, dynamic_batching=spec.dynamic_batching,
                         instances=spec.instances)
    for name, data in fl.generated(model_name, sig, opts).items():
        (vstage / name).write_bytes(data)
    if report_path is not None:
        shutil.copy2(report_path, vstage / "report.json")
        for beside in ("report.html", "calibration-profile.json"):  # the human-readable report, and what
            src = Path(report_path).with_name(beside)          # a production capture is compared with
            if src.exists():
                shutil.copy2(src, vstage / beside)
    meta = {"candidate": candidate_name, "flavour": fl.name, "runtime": runtime, "sha256": digest,
            "file": main_file, "files": {n: sha256_file(vstage / n) for n in sorted(os.listdir(vstage))},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "report": "report.json" if report_path is not None else None}
    (vstage / "lathe.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    for p in vstage.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    return Staged(vstage, fl, sig, opts, files, digest)


def next_config(st: Staged, model_name: str, old: str | None, existing: list[int], version: int) -> str:
    """config.pbtxt once `version` is in: a first version lists itself; later ones keep the served
    versions in version_policy (loading N+1 is the rollout's call) and must keep the served signature."""
    opts = st.options
    if old is None:  # a model folder without config.pbtxt keeps serving what it has
        opts.versions = [max(existing)] if existing else [version]
        cfg = st.flavour.config(model_name, st.signature, opts, st.files)
        check_config(cfg, name=model_name)
        return cfg
    opts.versions = config_versions(old) or ([max(existing)] if existing else [version])
    cfg = st.flavour.config(model_name, widen(st.signature, old, opts.max_batch_size), opts, st.files)
    check_config(cfg, name=model_name)
    if not io_compatible(io_of(old), io_of(cfg)):
        raise PublishError(
            f"{model_name}: new version's signature/platform differs from the served config "
            f"(all versions share config.pbtxt); publish under another model name.\n"
            f"served: {io_of(old)}\nnew:    {io_of(cfg)}")
    return cfg
