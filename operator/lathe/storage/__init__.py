"""Model and data locations: a local path (or file://), `pvc://claim/path` (mounted into Jobs under
$LATHE_PVC_ROOT, default /mnt/pvc), `https://…` (sha256 required, for data sets as for models:
spec.data.*.sha256; downloaded once to a cache) and `s3://bucket/key` (only when boto3 is installed;
the worker image has none, so the operator refuses s3:// locations before any Job runs)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from .uri import pvc_path


class StorageError(ValueError):
    """A location that cannot be resolved or whose content does not match its sha256."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pvc_root() -> Path:
    return Path(os.environ.get("LATHE_PVC_ROOT", "/mnt/pvc"))


def cache_dir() -> Path:
    return Path(os.environ.get("LATHE_CACHE", Path.home() / ".cache" / "lathe"))


def verify(path: Path, sha256: str | None, uri: str) -> None:
    if sha256 is None:
        return
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise StorageError(f"sha256 mismatch for {uri}: expected {sha256.lower()}, got {actual}")


def resolve(uri: str, sha256: str | None = None) -> Path:
    """A local path holding the content of `uri`, verified against `sha256` when given."""
    if uri.startswith("pvc://"):
        rest = uri[len("pvc://"):]
        claim, _, sub = rest.partition("/")
        if not claim or not sub:
            raise StorageError(f"{uri}: expected pvc://claim/path")
        path = pvc_path(claim, sub)
    elif uri.startswith("https://") or uri.startswith("http://"):
        if uri.startswith("http://"):
            raise StorageError(f"{uri}: plain http is not allowed, use https:// with a sha256")
        if not sha256:
            raise StorageError(f"{uri}: an https:// location needs a sha256")
        return _download(uri, sha256.lower())
    elif uri.startswith("s3://"):
        return _s3(uri, sha256)
    elif "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"{uri}: unsupported scheme (use a path, pvc://, https:// or s3://)")
    else:
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()
    if not path.exists():
        raise StorageError(f"{uri}: no such file ({path})")
    verify(path, sha256, uri)
    return path


def _download(uri: str, sha256: str) -> Path:
    name = Path(uri.split("?", 1)[0]).name or "download"
    dest = cache_dir() / sha256 / name
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(uri, timeout=60) as resp:  # noqa: S310
            shutil.copyfileobj(resp, out)
        verify(Path(tmp), sha256, uri)
        os.replace(tmp, dest)
    except StorageError:
        raise
    except Exception as e:
        raise StorageError(f"{uri}: download failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _s3(uri: str, sha256: str | None) -> Path:
    try:
        import boto3  # noqa: PLC0415
    except ImportError:
        raise StorageError(f"{uri}: s3:// needs boto3, which is not installed in this worker image; "
                           "use pvc:// or https:// with a sha256") from None
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise StorageError(f"{uri}: expected s3://bucket/key")
    dest = cache_dir() / "s3" / bucket / key
    if not (dest.exists() and (sha256 is None or sha256_file(dest) == sha256)):
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            boto3.client("s3").download_file(bucket, key, str(dest))
        except Exception as e:
            raise StorageError(f"{uri}: download failed: {e}") from e
    verify(dest, sha256, uri)
    return dest
