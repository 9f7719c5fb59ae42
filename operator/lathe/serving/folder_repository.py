"""A Triton model repository in a local folder (a path, or pvc://claim/path where the claim is mounted).

A version is staged in a sibling `.lathe-staging/` on the same filesystem (inside the model directory
under a non-numeric hidden name only when the sibling is not usable, which Triton ignores), then
renamed in with RENAME_NOREPLACE: a concurrent publisher that took N+1 first makes us retry with N+2,
never clobber. `config.pbtxt` is replaced atomically (write temp + rename).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from lathe.api.status import Published
from lathe.storage.paths import PathRefused, check_name, safe_join
from lathe.storage.uri import parse_uri, pvc_path

from .config import config_versions, set_version_policy
from .staging import Identity, PublishError, Staged, next_config, sha256_file


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


class FolderRepository:
    """Versions of models in a local folder; one publish() at a time per process is not required:
    concurrent publishers (processes or threads) each get their own number."""

    def __init__(self, repository: str | os.PathLike):
        self.repository = repository
        self.root = resolve_repository(repository)

    def existing(self, model_name: str, ident: Identity, candidate: str) -> Published | None:
        model_dir = model_folder(self.root, model_name)
        for v in reversed(versions(model_dir)):
            meta = read_meta(model_dir, v)
            if meta and meta.get("sha256") == ident.digest and meta.get("candidate") == candidate:
                return Published(repository=str(self.repository), model_name=model_name, version=v,
                                 flavour=meta.get("flavour", ident.flavour.name), sha256=ident.digest,
                                 candidate=candidate, path=str(model_dir / str(v)))
        return None

    @contextlib.contextmanager
    def staging(self, model_name: str) -> Iterator[Path]:
        """A folder on the repository's filesystem to build the version in (removed afterwards)."""
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
        model_dir = model_folder(self.root, model_name)
        stage_root = _staging_root(self.root, model_dir if model_dir.is_dir() else self.root)
        stage = Path(tempfile.mkdtemp(prefix=f".lathe-{model_name}-{uuid.uuid4().hex[:8]}-", dir=stage_root))
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def commit(self, model_name: str, st: Staged, candidate: str) -> Published:
        """Rename the staged version in as max(existing)+1 (RENAME_NOREPLACE; retried on a lost race)."""
        repository, candidate_name, model_dir = self.repository, candidate, model_folder(self.root, model_name)
        digest, vstage, stage = st.digest, st.dir, st.dir.parent
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
