"""One client for the object stores Lathe reads and writes: `s3://bucket/key`, `gs://bucket/key` and
`az://container/key`, over obstore (Python bindings of Rust's `object_store`, the crate Arrow and Delta
Lake use). The store-specific part is only how a store is opened (storage/s3.py, gcs.py, azure.py: a
*Settings class each, with credentials and endpoint); every call, every guarantee and every error
translation lives here once.

Guarantees every store gets:
- downloads stream to a file beside the destination and are renamed in only whole (size checked
  against the store's, under a byte limit), so no partial file is ever left;
- uploads are atomic per object (a multipart upload is completed or aborted by object_store);
- conditional writes: create-only (`if_none_match`) and update-if-unchanged (`if_match`, by ETag);
- each failure is one StorageError with its own `reason` (StorageNotFound, StorageAccessDenied,
  StorageUnreachable, StorageTooLarge, StorageConflict), built from the store's status, error code
  and message only: never the request URL (a SAS token travels in it) and never a credential (every
  secret value of the settings is scrubbed from the text as well).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from . import (
    StorageAccessDenied,
    StorageConflict,
    StorageError,
    StorageNotFound,
    StorageTooLarge,
    StorageUnreachable,
)

PART_SIZE = 32 << 20  # multipart above this (object_store uploads the parts concurrently)
# Error codes that mean "your credentials or policy", whatever HTTP status the server chose
# (versitygw answers an unknown access key with 404 XAdminUserNotFound).
_DENIED = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken",
           "XAdminUserNotFound", "AuthorizationHeaderMalformed", "InvalidSecurity", "AuthenticationFailed",
           "AuthorizationFailure", "AuthorizationPermissionMismatch", "InsufficientAccountPermissions",
           "AccountIsDisabled", "InvalidAuthenticationInfo", "NoAuthenticationInformation", "AuthenticationRequired"}


class Settings(Protocol):
    """What a store needs to be opened; implemented by S3Settings, GCSSettings and AzureSettings."""

    scheme: str  # "s3", "gs" or "az": the URI scheme of this store's locations

    @property
    def where(self) -> str: ...  # the endpoint, for messages

    def open(self, bucket: str, client_options: dict, retry_config: dict): ...  # an obstore store

    def secret_values(self) -> list[str]: ...  # scrubbed from every message


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # without quotes; an MD5 hex digest only on S3 single-part uploads (and GCS)


def _unquote(etag: str | None) -> str:
    return (etag or "").strip('"')


class ObjectClient:
    """get/put/list/copy/delete on one store (per bucket or container, opened on first use)."""

    def __init__(self, settings: Settings, *, connect_timeout: float = 10.0, read_timeout: float = 120.0,
                 retries: int = 2):
        self.settings = settings
        self.scheme = settings.scheme
        # Connection errors and 5xx are retried by object_store with backoff; a 4xx answer never is.
        self._client_options = {"connect_timeout": timedelta(seconds=connect_timeout),
                                "read_timeout": timedelta(seconds=read_timeout),
                                "timeout": timedelta(hours=6)}  # whole transfers of large models
        self._retry = {"max_retries": retries, "retry_timeout": timedelta(seconds=max(30.0, 4 * connect_timeout)),
                       "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=2),
                                   "base": 2}}
        self._stores: dict[str, object] = {}

    @property
    def where(self) -> str:
        return self.settings.where

    def uri(self, bucket: str, key: str = "") -> str:
        return f"{self.scheme}://{bucket}/{key}" if key else f"{self.scheme}://{bucket}"

    def _store(self, bucket: str):
        st = self._stores.get(bucket)
        if st is None:
            try:
                st = self.settings.open(bucket, dict(self._client_options), dict(self._retry))
            except StorageError:
                raise
            except Exception as e:  # noqa: BLE001 - a malformed endpoint or key, as object_store words it
                raise StorageError(f"{self.uri(bucket)}: cannot open the store: {self._scrub(str(e))}") from None
            self._stores[bucket] = st
        return st

    # --- errors --------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        for s in self.settings.secret_values():
            if s and len(s) >= 4:
                text = text.replace(s, "***")
        return re.sub(r"(?i)(sig|signature|x-amz-security-token|token)=[^&\s\"']+", r"\1=***", text)

    def _error(self, e: Exception, what: str, op: str) -> StorageError:
        err = self._classify(e, what, op)
        status, body = _status_and_body(str(e))
        err.status, err.code = status, _code_and_message(body)[0]  # type: ignore[attr-defined]
        return err

    def _classify(self, e: Exception, what: str, op: str) -> StorageError:
        import obstore.exceptions as ox  # noqa: PLC0415

        text = str(e)
        status, body = _status_and_body(text)
        code, message = _code_and_message(body)
        head = f"{what}: {op}"
        if status:
            detail = f"{head} answered HTTP {status}" + (f" {code}" if code else "") + (f" ({message})" if message else "")
        else:
            detail = f"{head} failed"
        detail = self._scrub(detail)
        if code in _DENIED or status in (401, 403) or isinstance(e, ox.PermissionDeniedError | ox.UnauthenticatedError):
            return StorageAccessDenied(detail + ": check the credentials in spec.storage and the bucket's policy")
        if isinstance(e, ox.AlreadyExistsError | ox.PreconditionError) or status in (409, 412):
            return StorageConflict(detail)
        if isinstance(e, FileNotFoundError) or status in (404, 410):
            return StorageNotFound(detail)
        if status is not None and status >= 500:
            return StorageUnreachable(detail)
        if status is None and _transport_failure(text):
            return StorageUnreachable(f"{what}: {op}: endpoint {self.where} unreachable "
                                      f"({self._scrub(_transport_cause(text))})")
        return StorageError(detail if status else f"{head} failed: {self._scrub(text.splitlines()[0][:300])}")

    def _call(self, what: str, op: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - every obstore failure becomes a StorageError
            raise self._error(e, what, op) from None

    # --- objects -------------------------------------------------------------------------------
    def head(self, bucket: str, key: str) -> ObjectInfo:
        import obstore as obs  # noqa: PLC0415

        what = self.uri(bucket, key)
        st = self._store(bucket)
        try:
            meta = st.head(key)
        except Exception as e:  # noqa: BLE001
            err = self._error(e, what, "HEAD")
            if isinstance(err, StorageNotFound | StorageAccessDenied) and not getattr(err, "code", ""):
                # A HEAD answer has no body to say whether the bucket or the key is missing (or, on
                # versitygw, that the access key is unknown): a GET of the same key says which.
                self._call(what, "GET", obs.get, st, key)
            raise err from None
        return ObjectInfo(key, int(meta["size"]), _unquote(meta.get("e_tag")))

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.head(bucket, key)
            return True
        except StorageNotFound:
            return False

    def get_bytes(self, bucket: str, key: str) -> bytes:
        import obstore as obs  # noqa: PLC0415

        what = self.uri(bucket, key)
        r = self._call(what, "GET", obs.get, self._store(bucket), key)
        return bytes(self._call(what, "GET", r.bytes))

    def download(self, bucket: str, key: str, dest: Path, *, max_bytes: int, if_match: str | None = None
                 ) -> ObjectInfo:
        """Stream an object to `dest` (written beside it, then renamed): no partial file is ever left.
        `if_match`: the ETag the caller expects (a head's), so the bytes are that version's."""
        import obstore as obs  # noqa: PLC0415

        what = self.uri(bucket, key)
        head = self.head(bucket, key) if if_match is None else None
        if head is not None and head.size > max_bytes:
            raise StorageTooLarge(f"{what}: {head.size} bytes, over the limit of {max_bytes}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        opts = {"if_match": f'"{if_match}"'} if if_match else None
        r = self._call(what, "GET", obs.get, self._store(bucket), key, options=opts)
        meta = r.meta
        size, etag = int(meta["size"]), _unquote(meta.get("e_tag"))
        if size > max_bytes:
            raise StorageTooLarge(f"{what}: {size} bytes, over the limit of {max_bytes}")
        n = 0
        try:
            with open(tmp, "wb") as out:
                try:
                    for chunk in r.stream(min_chunk_size=1 << 20):
                        n += len(chunk)
                        if n > max_bytes:
                            raise StorageTooLarge(f"{what}: more than {max_bytes} bytes")
                        out.write(chunk)
                except StorageError:
                    raise
                except Exception as e:  # noqa: BLE001 - a cut connection mid-body
                    raise StorageUnreachable(f"{what}: download cut after {n} bytes "
                                             f"({self._scrub(_transport_cause(str(e)))})") from None
            if n != size:
                raise StorageUnreachable(f"{what}: got {n} of {size} bytes (connection cut)")
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        return ObjectInfo(key, size, etag)

    def put_bytes(self, bucket: str, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None, content_type: str = "application/octet-stream") -> str:
        """PUT one object. if_none_match: refuse (StorageConflict) when the key exists; if_match: write
        only over the version with this ETag (StorageConflict otherwise). Returns the new ETag."""
        import obstore as obs  # noqa: PLC0415

        mode: object = "create" if if_none_match else ({"e_tag": f'"{if_match}"'} if if_match else None)
        r = self._call(self.uri(bucket, key), "PUT", obs.put, self._store(bucket), key, data, mode=mode,
                       use_multipart=False, attributes={"Content-Type": content_type})
        return _unquote(r.get("e_tag"))

    def upload(self, bucket: str, key: str, path: Path, *, part_size: int = PART_SIZE) -> str:
        """A file as one object: a single PUT up to part_size, else a multipart upload (parts of
        part_size, completed or aborted by object_store). Returns the ETag."""
        import obstore as obs  # noqa: PLC0415

        size = path.stat().st_size
        r = self._call(self.uri(bucket, key), "PUT", obs.put, self._store(bucket), key, path,
                       use_multipart=size > part_size, chunk_size=part_size, max_concurrency=4)
        return _unquote(r.get("e_tag"))

    def copy(self, bucket: str, src: str, dst: str) -> None:
        """Server-side copy inside a bucket or container."""
        import obstore as obs  # noqa: PLC0415

        self._call(self.uri(bucket, dst), f"COPY from {src}", obs.copy, self._store(bucket), src, dst)

    def delete(self, bucket: str, key: str) -> None:
        """Delete a key; one that is already gone is fine."""
        import obstore as obs  # noqa: PLC0415

        try:
            self._call(self.uri(bucket, key), "DELETE", obs.delete, self._store(bucket), key)
        except StorageNotFound:
            pass

    def list(self, bucket: str, prefix: str = "", delimiter: str | None = None, max_keys: int | None = None,
             limit: int | None = None) -> tuple[list[ObjectInfo], list[str]]:
        """(objects, common prefixes) under `prefix`, following every page of the store's listing.
        delimiter "/": the objects directly under prefix, and the "folders" below it (each ending in
        "/", as S3 writes them). limit: stop after the first `limit` objects (an existence check).
        max_keys: objects per chunk handed over from object_store (its page size is the store's own)."""
        import obstore as obs  # noqa: PLC0415

        what = self.uri(bucket, prefix)
        st = self._store(bucket)
        if delimiter is not None:
            if delimiter != "/":
                raise StorageError(f"{what}: only '/' is supported as a delimiter")
            parent = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
            res = self._call(what, "LIST", obs.list_with_delimiter, st, parent or None)
            objs = [_info(m) for m in res["objects"] if m["path"].startswith(prefix)]
            prefixes = [f"{p}/" for p in res["common_prefixes"] if f"{p}/".startswith(prefix)]
            return sorted(objs, key=lambda o: o.key), sorted(prefixes)
        # object_store lists whole path segments: "a/b" finds a/b/x but not a/bc; a prefix that ends
        # mid-segment is listed from its parent and filtered here.
        base = prefix if prefix.endswith("/") or not prefix else (prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else "")
        chunk = max(1, min(limit or max_keys or 1000, 1000))
        out: list[ObjectInfo] = []
        stream = self._call(what, "LIST", obs.list, st, base.rstrip("/") or None, chunk_size=chunk)
        for batch in _iterate(stream, lambda e: self._error(e, what, "LIST")):
            out += [_info(m) for m in batch if m["path"].startswith(prefix)]
            if limit and len(out) >= limit:
                break
        return sorted(out, key=lambda o: o.key), []

    def check_bucket(self, bucket: str) -> None:
        """Raise the StorageError a user should see when the bucket is missing or not ours to use."""
        self.list(bucket, "", limit=1)


def _iterate(stream, to_error) -> Iterable:
    it = iter(stream)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001
            raise to_error(e) from None
        yield batch


def _info(m) -> ObjectInfo:
    return ObjectInfo(m["path"], int(m["size"]), _unquote(m.get("e_tag")))


_STATUS = re.compile(r"status code: (\d{3})[^:\n]*:?\s?(.*)", re.S)


def _status_and_body(text: str) -> tuple[int | None, str]:
    """object_store words an HTTP answer as '... Server returned non-2xx status code: 404 Not Found:
    <body>' (and its debug part after 'Debug source:')."""
    text = text.split("\n\nDebug source:", 1)[0]
    m = _STATUS.search(text)
    if not m:
        m2 = re.search(r"\(code: (\d{3})\)", text)  # Azure's bulk delete words it this way
        return (int(m2.group(1)), text) if m2 else (None, "")
    return int(m.group(1)), m.group(2)


def _code_and_message(body: str) -> tuple[str, str]:
    """The error code and message of an S3/Azure XML or GCS JSON error body."""
    code = re.search(r"<Code>([^<]+)</Code>", body)
    msg = re.search(r"<Message>([^<]+)</Message>", body)
    if code or msg:
        message = (msg.group(1) if msg else "").split("\n", 1)[0].strip()  # Azure appends RequestId lines
        return (code.group(1) if code else ""), message[:300]
    jm = re.search(r'"message"\s*:\s*"([^"]+)"', body)
    jr = re.search(r'"reason"\s*:\s*"([^"]+)"', body)
    if jm or jr:
        return (jr.group(1) if jr else ""), (jm.group(1) if jm else "")[:300]
    return "", body.strip().split("\n", 1)[0][:200]


def _transport_failure(text: str) -> bool:
    t = text.lower()
    return any(s in t for s in ("http error", "error sending request", "connect", "timed out", "timeout", "dns",
                                "certificate", "tls", "connection", "io error", "broken pipe", "reset by peer"))


def _transport_cause(text: str) -> str:
    """The root cause object_store's debug text names (connection refused, a TLS verification failure,
    a timeout), in a few words."""
    t = text
    if re.search(r"(?i)invalid peer certificate|certificate verify|UnknownIssuer|BadSignature|NotValidForName", t):
        m = re.search(r"(?i)invalid peer certificate:?\s*([A-Za-z]+)", t)
        return f"TLS: certificate verify failed ({m.group(1) if m else 'untrusted certificate'})"
    for pat, words in ((r"Connection refused", "connection refused"), (r"(?i)timed out|TimedOut", "timed out"),
                       (r"(?i)dns error|failed to lookup address", "DNS lookup failed"),
                       (r"(?i)connection reset", "connection reset"), (r"(?i)broken pipe", "broken pipe")):
        if re.search(pat, t):
            return words
    first = t.split("\n\nDebug source:", 1)[0].strip().splitlines()
    return re.sub(r"https?://\S+", "", first[0] if first else t)[:200]
