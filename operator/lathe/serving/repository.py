"""Triton model repository writer: atomic, never-overwriting publication of version N+1.

Layout written for model `m`, version `N`:
    <repo>/m/config.pbtxt            shared by all versions (IO, batching, instances, version_policy)
    <repo>/m/N/<model files>         model.onnx | model.plan | model_sm80.plan ... | model.py
    <repo>/m/N/lathe.json            candidate, flavour, sha256 of every file, created time
    <repo>/m/N/report.json           the validation report (when given)

Publishing builds the version directory in a staging directory outside the repository (a sibling
`.lathe-staging/` on the same filesystem; inside the model directory under a non-numeric hidden
name only when the sibling is not usable, which Triton ignores), then renames it in with
RENAME_NOREPLACE: a concurrent publisher that took N+1 first makes us retry with N+2, never clobber.
`config.pbtxt` is replaced atomically (write temp + rename); its version_policy keeps the versions
that are being served — loading N+1 is Triton control's job (`serving.triton`), not the writer's.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lathe.api.spec import Publish
from lathe.api.status import Published
from lathe.storage.paths import PathRefused, check_name, safe_join
from lathe.storage.uri import parse_uri, pvc_path

from .config import (
    ConfigError,
    ConfigOptions,
    Flavour,
    check_config,
    config_versions,
    flavour_for,
    io_compatible,
    io_of,
    set_version_policy,
    widen,
)


class PublishError(RuntimeError):
    pass


def resolve_repository(uri: str | os.PathLike) -> Path:
    """A local path, or `pvc://claim/path` -> where the claim is mounted (lathe.storage.uri.pvc_path),
    resolved inside the claim. PathRefused (a ValueError) for a path that would leave it."""
    s = str(uri)
    try:
        scheme, authority, key = parse_uri(s)
    except PathRefused:
        raise
    except ValueError as e:
        raise PublishError(f"bad model repository {s!r}: {e}") from None
    if scheme == "pvc":
        return pvc_path(authority, key.rstrip("/"))
    if scheme != "file":
        raise PublishError(f"unsupported model repository {s!r}: a path or pvc://claim/path")
    return Path(key).expanduser()


def model_folder(repo: Path, model_name: str) -> Path:
    """`<repo>/<model_name>`, refused (PathRefused) for a name that is not one plain folder name ('.', '..',
    a hidden name, a '/') or whose folder is a symlink out of the repository."""
    return safe_join(repo, check_name(model_name, "spec.publish.modelName"), "spec.publish.modelName")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(model_dir: str | os.PathLike) -> list[int]:
    """Version directories present (numeric names only, as Triton sees them)."""
    try:
        return sorted(int(e.name) for e in os.scandir(model_dir) if e.is_dir() and e.name.isdigit())
    except FileNotFoundError:
        return []


def read_meta(model_dir: str | os.PathLike, version: int) -> dict | None:
    try:
        return json.loads((Path(model_dir) / str(version) / "lathe.json").read_text())
    except (OSError, ValueError):
        return None


# --- rename without replacing (Linux renameat2 RENAME_NOREPLACE; fallback: rename of a non-empty dir)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
except (OSError, AttributeError):  # pragma: no cover - non-glibc
    _renameat2 = None


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Atomic rename that fails with FileExistsError when dst exists (even as an empty directory)."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        e = ctypes.get_errno()
        if e in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(e, os.strerror(e), str(dst))
        if e not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the filesystem does not support the flag
            raise OSError(e, os.strerror(e), str(dst))
    if os.path.exists(dst):  # fallback: our staged dirs are never empty, so rename onto one fails anyway
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(e.errno, e.strerror, str(dst)) from e
        raise


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def _staging_root(repo: Path, model_dir: Path) -> Path:
    sib = repo.parent / ".lathe-staging"
    try:
        sib.mkdir(exist_ok=True)
        if os.stat(sib).st_dev == os.stat(repo).st_dev and os.access(sib, os.W_OK):
            return sib
    except OSError:
        pass
    # same filesystem guaranteed; Triton only treats numeric subdirectories as versions
    return model_dir


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
        if not p.is_file():
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


def publish(repository: str | os.PathLike, model_name: str, artifact_files: Sequence[str | os.PathLike]
            | Mapping[str, str | os.PathLike] | str | os.PathLike, runtime: str, publish_spec: Publish | None,
            candidate_name: str, report_path: str | os.PathLike | None = None, *,
            flavour: str | None = None, reuse_existing: bool = True) -> Published:
    """Write the candidate as version max(existing)+1 of `model_name` in the Triton repository.

    artifact_files: the model file(s): an .onnx for onnxruntime/python; .plan engines (+ the source .onnx for
    the signature) for tensorrt; a mapping {name: path} when names matter (model_sm80.plan ...).
    runtime: the candidate's runtime (onnxruntime/openvino/tensorrt) — picks the flavour when the spec says auto.
    reuse_existing: a version already holding the same candidate and artifact sha256 is returned instead of
    publishing a duplicate (an operator restarted between publish and status write must not add N+2).
    An s3://bucket/prefix repository is written by serving.s3_repository (same layout, same guarantees).
    """
    check_name(model_name, "spec.publish.modelName")  # before anything is staged, on every store
    spec = publish_spec or Publish(repository=str(repository), model_name=model_name)
    ident = identify(artifact_files, runtime, spec, flavour)
    if str(repository).startswith("s3://"):
        from .s3_repository import existing_s3, publish_s3  # noqa: PLC0415

        found = existing_s3(str(repository), model_name, ident, candidate_name) if reuse_existing else None
        if found is not None:
            return found
        with tempfile.TemporaryDirectory(prefix=f"lathe-{model_name}-") as tmp:
            st = stage_version(Path(tmp), model_name, ident, runtime, spec, candidate_name, report_path)
            return publish_s3(str(repository), model_name, st, candidate_name)
    repo = resolve_repository(repository)
    model_dir = model_folder(repo, model_name)
    if not repo.is_dir():
        repo.mkdir(parents=True, exist_ok=True)
    digest = ident.digest
    if reuse_existing:  # before anything is copied: a restarted operator's re-publish costs no copy of the model
        for v in reversed(versions(model_dir)):
            meta = read_meta(model_dir, v)
            if meta and meta.get("sha256") == digest and meta.get("candidate") == candidate_name:
                return Published(repository=str(repository), model_name=model_name, version=v,
                                 flavour=meta.get("flavour", ident.flavour.name), sha256=digest,
                                 candidate=candidate_name, path=str(model_dir / str(v)))
    stage_root = _staging_root(repo, model_dir if model_dir.is_dir() else repo)
    stage = Path(tempfile.mkdtemp(prefix=f".lathe-{model_name}-{uuid.uuid4().hex[:8]}-", dir=stage_root))
    try:
        st = stage_version(stage, model_name, ident, runtime, spec, candidate_name, report_path)
        vstage = st.dir
        for _attempt in range(100):
            existing = versions(model_dir)
            version = (max(existing) if existing else 0) + 1
            if not model_dir.exists():
                # first version: build the whole model dir, rename it in (config lists version 1 only)
                mstage = stage / "model"
                mstage.mkdir(exist_ok=True)
                (mstage / "config.pbtxt").write_text(next_config(st, model_name, None, existing, version))
                os.rename(vstage, mstage / str(version))
                try:
                    rename_noreplace(mstage, model_dir)
                    return _published(repository, model_name, version, st.flavour.name, digest, candidate_name,
                                      model_dir)
                except FileExistsError:  # a concurrent publisher created the model: publish beside it
                    os.rename(mstage / str(version), vstage)
                    shutil.rmtree(mstage)
                    continue
            cfg_path = model_dir / "config.pbtxt"
            old = cfg_path.read_text() if cfg_path.exists() else None
            cfg = next_config(st, model_name, old, existing, version)
            try:
                rename_noreplace(vstage, model_dir / str(version))
            except FileExistsError:
                continue  # lost the race for this number: take the next one
            # batching/instances from the spec take effect at the next load; keep the served versions
            if old is not None:
                cfg = set_version_policy(cfg, config_versions(_current(cfg_path)) or st.options.versions)
            write_atomic(cfg_path, cfg.encode())
            return _published(repository, model_name, version, st.flavour.name, digest, candidate_name, model_dir)
        raise PublishError(f"{model_name}: could not claim a version number after 100 attempts")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _current(cfg_path: Path) -> str:
    try:
        return cfg_path.read_text()
    except OSError:
        return ""


def _published(repository, model_name, version, flavour, digest, candidate, model_dir: Path) -> Published:
    return Published(repository=str(repository), model_name=model_name, version=version, flavour=flavour,
                     sha256=digest, candidate=candidate, path=str(model_dir / str(version)))


def verify(model_dir: str | os.PathLike, version: int) -> bool:
    """Re-hash a published version against its lathe.json (detects a corrupted/partial copy)."""
    meta = read_meta(model_dir, version)
    if not meta:
        return False
    vdir = Path(model_dir) / str(version)
    return all((vdir / n).is_file() and sha256_file(vdir / n) == h for n, h in meta.get("files", {}).items())


__all__ = ["publish", "PublishError", "ConfigError", "resolve_repository", "model_folder", "versions", "read_meta", "verify",
           "sha256_file", "rename_noreplace", "write_atomic"]
