"""Model and data locations: a local path (or file://), `pvc://claim/path` (mounted into Jobs under
$LATHE_PVC_ROOT, default /mnt/pvc), `https://…` (sha256 required, for data sets as for models:
spec.data.*.sha256; downloaded once to a cache) and the object stores `s3://bucket/key`,
`gs://bucket/key` and `az://container/key` (storage/objects.py over obstore; credentials from the
variables the operator sets from spec.storage.s3, .gcs or .azure). Downloads stream to disk under a
size limit ($LATHE_MAX_DOWNLOAD_BYTES, default 64 GiB) and the free space of the cache.

Each StorageError has a `reason` the resource's status shows: StorageNotFound, StorageAccessDenied,
StorageUnreachable, StorageTooLarge, ChecksumMismatch, StorageConflict, or StorageError."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .paths import PathRefused, safe_join
from .uri import parse_uri, pvc_path


class StorageError(ValueError):
    """A location that cannot be resolved or whose content does not match its sha256."""

    reason = "StorageError"


class StorageNotFound(StorageError):
    reason = "StorageNotFound"  # no such bucket, key or file


class StorageAccessDenied(StorageError):
    reason = "StorageAccessDenied"  # wrong or missing credentials, or a policy that refuses us


class StorageUnreachable(StorageError):
    reason = "StorageUnreachable"  # endpoint down, DNS, TLS, timeouts, 5xx, a cut transfer


class StorageTooLarge(StorageError):
    reason = "StorageTooLarge"


class ChecksumMismatch(StorageError):
    reason = "ChecksumMismatch"


class StorageConflict(StorageError):
    reason = "StorageConflict"  # a conditional write found the key taken


def max_download_bytes() -> int:
    return int(os.environ.get("LATHE_MAX_DOWNLOAD_BYTES") or 64 << 30)


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
        raise ChecksumMismatch(f"sha256 mismatch for {uri}: expected {sha256.lower()}, got {actual}")


def resolve(uri: str, sha256: str | None = None) -> Path:
    """A local path holding the content of `uri`, verified against `sha256` when given. Every path is
    checked first (storage.paths): a '..' anywhere, or a pvc:// path whose symlinks lead out of its claim,
    raises PathRefused (a ValueError, not a StorageError: it is the user's mistake, not the store's)."""
    if uri.startswith("http://"):
        raise StorageError(f"{uri}: plain http is not allowed, use https:// with a sha256")
    try:
        scheme, authority, sub = parse_uri(uri)
    except PathRefused:
        raise
    except ValueError as e:
        raise StorageError(str(e)) from None
    if scheme == "pvc":
        if not sub or sub.endswith("/"):
            raise StorageError(f"{uri}: expected pvc://claim/path of a file")
        path = pvc_path(authority, sub)
    elif scheme == "https":
        if not sha256:
            raise StorageError(f"{uri}: an https:// location needs a sha256")
        return _download(uri, sha256.lower())
    elif scheme in ("s3", "gs", "az"):
        return _object(uri, sha256)
    elif scheme != "file":
        raise StorageError(f"{uri}: unsupported scheme (use a path, pvc://, https://, s3://, gs:// or az://)")
    else:
        path = Path(sub).expanduser()
    if not path.exists():
        raise StorageNotFound(f"{uri}: no such file ({path})")
    verify(path, sha256, uri)
    return path


def _download(uri: str, sha256: str) -> Path:
    name = Path(uri.split("?", 1)[0]).name
    if name in ("", ".", ".."):
        name = "download"
    dest = cache_dir() / sha256 / name
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    limit = max_download_bytes()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(uri, timeout=60) as resp:  # noqa: S310
            n = 0
            while block := resp.read(1 << 20):
                n += len(block)
                if n > limit:
                    raise StorageTooLarge(f"{uri}: more than {limit} bytes (LATHE_MAX_DOWNLOAD_BYTES)")
                out.write(block)
        verify(Path(tmp), sha256, uri)
        os.replace(tmp, dest)
    except StorageError:
        raise
    except urllib.error.HTTPError as e:
        cls = StorageNotFound if e.code in (404, 410) else StorageAccessDenied if e.code in (401, 403) \
            else StorageUnreachable if e.code >= 500 else StorageError
        raise cls(f"{uri}: download failed: HTTP {e.code} {e.reason}") from None
    except OSError as e:  # URLError, timeouts, TLS, a cut connection
        raise StorageUnreachable(f"{uri}: download failed: {getattr(e, 'reason', e)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _object(uri: str, sha256: str | None) -> Path:
    """Download once into the cache; a cached copy is reused while its size and ETag match the store's."""
    from .clients import client_for, split  # noqa: PLC0415

    scheme, bucket, key = split(uri)
    if not key or key.endswith("/"):
        raise StorageError(f"{uri}: expected {scheme}://bucket/key (an object, not a prefix)")
    client = client_for(scheme)
    head = client.head(bucket, key)
    dest = safe_join(cache_dir() / client.scheme, f"{bucket}/{key}", uri)  # parse_uri refused '..' already
    tag = dest.with_name(f".{dest.name}.etag")
    stamp = f"{head.size} {head.etag}"
    if not (dest.exists() and tag.exists() and tag.read_text() == stamp):
        limit = max_download_bytes()
        if head.size > limit:
            raise StorageTooLarge(f"{uri}: {head.size} bytes, over the limit of {limit} (LATHE_MAX_DOWNLOAD_BYTES)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest.parent).free
        if head.size > free:
            raise StorageTooLarge(f"{uri}: {head.size} bytes, but only {free} free in {dest.parent}")
        got = client.download(bucket, key, dest, max_bytes=limit, if_match=head.etag or None)
        tag.write_text(f"{got.size} {got.etag}")
    verify(dest, sha256, uri)
    return dest
