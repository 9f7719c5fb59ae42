"""The S3 calls Lathe makes (HEAD, GET to a file, PUT, multipart PUT, ListObjectsV2, COPY, DELETE),
signed with AWS Signature V4 over urllib3.

Why not boto3 or minio: botocore pins python-dateutil<3 while the kubernetes client needs >=3, and
minio brings argon2/pycryptodome for admin and SSE-C features Lathe never uses; these seven calls are
small, and they are tested against a real S3 server (versitygw) in tests/storage.

Credentials and endpoint come from the standard AWS variables, which is what the operator sets in the
worker pod from `spec.storage.s3.secretRef` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional
AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_CA_BUNDLE). A custom
endpoint is addressed path-style (MinIO, Ceph, versitygw); AWS itself virtual-hosted style.
Every failure is a StorageError whose `reason` tells a user's mistake (StorageNotFound,
StorageAccessDenied) from an unreachable store (StorageUnreachable); no secret ever appears in a message.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import os
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import urllib3

from . import (
    StorageAccessDenied,
    StorageConflict,
    StorageError,
    StorageNotFound,
    StorageTooLarge,
    StorageUnreachable,
)

PART_SIZE = 32 << 20  # multipart above this; parts are read into memory and signed one at a time
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_DENIED = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken",
           "XAdminUserNotFound", "AuthorizationHeaderMalformed", "InvalidSecurity"}
_MISSING = {"NoSuchBucket", "NoSuchKey", "NoSuchUpload"}


def parse_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key); key may be empty (a bucket or prefix)."""
    if not uri.startswith("s3://"):
        raise StorageError(f"{uri}: not an s3:// location")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: expected s3://bucket/key")
    return bucket, key


@dataclass(frozen=True, repr=False)
class S3Settings:
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    endpoint: str | None = None  # scheme://host[:port]; None: AWS
    ca_bundle: str | None = None
    session_token: str | None = None
    ca_data: str | None = None  # PEM text, for a caller that holds the CA in memory (the operator)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise StorageAccessDenied("no S3 credentials in this process (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); "
                                      "name a Secret in spec.storage.s3.secretRef")
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        return cls(key, secret, env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
                   endpoint.rstrip("/") if endpoint else None, env.get("AWS_CA_BUNDLE") or None,
                   env.get("AWS_SESSION_TOKEN") or None)

    def __repr__(self) -> str:  # never the secret key
        return f"S3Settings(access_key={self.access_key!r}, region={self.region!r}, endpoint={self.endpoint!r})"

    def env(self) -> dict[str, str]:
        """The same settings as AWS variables (for a child process such as Triton)."""
        out = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
               "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}
        if self.endpoint:
            out["AWS_ENDPOINT_URL"] = out["AWS_ENDPOINT_URL_S3"] = self.endpoint
        if self.ca_bundle:
            out["AWS_CA_BUNDLE"] = self.ca_bundle
        if self.session_token:
            out["AWS_SESSION_TOKEN"] = self.session_token
        return out


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    etag: str


def _q(s: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(s, safe=safe)


def sign(method: str, host: str, path: str, query: Mapping[str, str], headers: dict[str, str], payload_sha: str,
         settings: S3Settings, now: _dt.datetime | None = None) -> dict[str, str]:
    """Headers of a SigV4-signed S3 request (Authorization included). `path` is decoded; S3 encodes it once."""
    now = now or _dt.datetime.now(_dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    hdrs = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    hdrs.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha})
    if settings.session_token:
        hdrs["x-amz-security-token"] = settings.session_token
    names = sorted(hdrs)
    canonical = "\n".join([method, _q(path, safe="/-_.~"),
                           "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(query.items())),
                           "".join(f"{k}:{hdrs[k]}\n" for k in names), ";".join(names), payload_sha])
    scope = f"{day}/{settings.region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + settings.secret_key).encode()
    for part in (day, settings.region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    hdrs["authorization"] = (f"AWS4-HMAC-SHA256 Credential={settings.access_key}/{scope}, "
                             f"SignedHeaders={';'.join(names)}, Signature={sig}")
    return hdrs


class S3Client:
    def __init__(self, settings: S3Settings | None = None, *, connect_timeout: float = 10.0,
                 read_timeout: float = 120.0, retries: int = 2):
        self.settings = settings or S3Settings.from_env()
        ep = self.settings.endpoint
        self._custom = ep is not None
        u = urllib.parse.urlsplit(ep or f"https://s3.{self.settings.region}.amazonaws.com")
        if u.scheme not in ("http", "https") or not u.hostname:
            raise StorageError(f"S3 endpoint {ep!r}: expected http(s)://host[:port]")
        self._scheme, self._netloc = u.scheme, u.netloc
        kw: dict = {"ca_certs": self.settings.ca_bundle} if self.settings.ca_bundle else {}
        if self.settings.ca_data:
            kw["ca_cert_data"] = self.settings.ca_data
        # Connection errors are retried with backoff here; HTTP answers never are (a 403 stays a 403).
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(total=retries, connect=retries, read=0, status=0, redirect=0,
                                  backoff_factor=0.5, raise_on_status=False), **kw)

    @property
    def where(self) -> str:
        return f"{self._scheme}://{self._netloc}"

    def _target(self, bucket: str, key: str) -> tuple[str, str]:
        if self._custom:
            return self._netloc, f"/{bucket}/{key}" if key else f"/{bucket}"
        return f"{bucket}.{self._netloc}", f"/{key}"

    def _request(self, method: str, bucket: str, key: str = "", *, query: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None, body: bytes = b"", stream: bool = False,
                 ok: tuple[int, ...] = (200, 204, 206)) -> urllib3.BaseHTTPResponse:
        query = dict(query or {})
        host, path = self._target(bucket, key)
        hdrs = sign(method, host, path, query, dict(headers or {}), hashlib.sha256(body).hexdigest(), self.settings)
        url = f"{self._scheme}://{host}{_q(path, safe='/-_.~')}"
        if query:
            url += "?" + "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(query.items()))
        what = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
        try:
            r = self._http.request(method, url, body=body or None, headers=hdrs, preload_content=not stream,
                                   redirect=False)
        except urllib3.exceptions.HTTPError as e:
            raise StorageUnreachable(f"{what}: S3 endpoint {self.where} unreachable ({_cause(e)})") from None
        if r.status not in ok:
            data = r.data if not stream else r.read()
            r.release_conn()
            raise _error(what, method, r.status, data)
        return r

    # --- objects -------------------------------------------------------------------------------------
    def head(self, bucket: str, key: str) -> S3Object:
        try:
            r = self._request("HEAD", bucket, key)
        except StorageError as e:
            if not str(getattr(e, "code", "")).isdigit():
                raise
            # A HEAD answer has no body to say what is wrong (NoSuchBucket or NoSuchKey, which 403):
            # a one-byte GET raises the same error with its code.
            self._request("GET", bucket, key, headers={"range": "bytes=0-0"}, ok=(200, 206, 416))
            raise
        return S3Object(key, int(r.headers.get("content-length", 0)), r.headers.get("etag", "").strip('"'))

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.head(bucket, key)
            return True
        except StorageNotFound:
            return False

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self._request("GET", bucket, key).data

    def download(self, bucket: str, key: str, dest: Path, *, max_bytes: int) -> S3Object:
        """Stream an object to `dest` (written beside it, then renamed): no partial file is ever left."""
        head = self.head(bucket, key)
        if head.size > max_bytes:
            raise StorageTooLarge(f"s3://{bucket}/{key}: {head.size} bytes, over the limit of {max_bytes}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        r = self._request("GET", bucket, key, stream=True)
        n = 0
        try:
            with open(tmp, "wb") as out:
                for chunk in r.stream(1 << 20):
                    n += len(chunk)
                    if n > max_bytes:
                        raise StorageTooLarge(f"s3://{bucket}/{key}: more than {max_bytes} bytes")
                    out.write(chunk)
            if n != head.size:
                raise StorageUnreachable(f"s3://{bucket}/{key}: got {n} of {head.size} bytes (connection cut)")
            os.replace(tmp, dest)
        except urllib3.exceptions.HTTPError as e:
            raise StorageUnreachable(f"s3://{bucket}/{key}: download cut after {n} bytes ({_cause(e)})") from None
        finally:
            r.release_conn()
            if tmp.exists():
                tmp.unlink()
        return head

    def put_bytes(self, bucket: str, key: str, data: bytes, *, if_none_match: bool = False,
                  content_type: str = "application/octet-stream") -> str:
        """PUT one object; if_none_match: refuse (StorageConflict) when the key exists. Returns the ETag."""
        hdrs = {"content-type": content_type, "content-md5": _md5_b64(data)}
        if if_none_match:
            hdrs["if-none-match"] = "*"
        try:
            r = self._request("PUT", bucket, key, headers=hdrs, body=data)
        except StorageError as e:
            if getattr(e, "status", None) == 412:
                raise StorageConflict(f"s3://{bucket}/{key} exists") from None
            raise
        return r.headers.get("etag", "").strip('"')

    def upload(self, bucket: str, key: str, path: Path, *, part_size: int = PART_SIZE) -> str:
        size = path.stat().st_size
        if size <= part_size:
            return self.put_bytes(bucket, key, path.read_bytes())
        r = self._request("POST", bucket, key, query={"uploads": ""})
        upload_id = ET.fromstring(r.data).findtext(f"{_NS}UploadId") or ET.fromstring(r.data).findtext("UploadId")
        parts: list[tuple[int, str]] = []
        try:
            with open(path, "rb") as f:
                while block := f.read(part_size):
                    no = len(parts) + 1
                    pr = self._request("PUT", bucket, key, query={"partNumber": str(no), "uploadId": upload_id},
                                       headers={"content-md5": _md5_b64(block)}, body=block)
                    parts.append((no, pr.headers.get("etag", "")))
            doc = "<CompleteMultipartUpload>" + "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts) + \
                "</CompleteMultipartUpload>"
            r = self._request("POST", bucket, key, query={"uploadId": upload_id}, body=doc.encode())
            if b"<Error>" in r.data[:200]:  # S3 may answer 200 and put the error in the body
                raise _error(f"s3://{bucket}/{key}", "POST", 500, r.data)
        except BaseException:
            try:
                self._request("DELETE", bucket, key, query={"uploadId": upload_id})
            except StorageError:
                pass
            raise
        return (ET.fromstring(r.data).findtext(f"{_NS}ETag") or "").strip('"')

    def copy(self, bucket: str, src: str, dst: str) -> None:
        """Server-side copy inside a bucket (objects up to 5 GiB, what S3's CopyObject allows)."""
        r = self._request("PUT", bucket, dst, headers={"x-amz-copy-source": _q(f"/{bucket}/{src}", safe="/-_.~")})
        if b"<Error>" in r.data[:200]:
            raise _error(f"s3://{bucket}/{dst}", "PUT", 500, r.data)

    def delete(self, bucket: str, key: str) -> None:
        self._request("DELETE", bucket, key, ok=(200, 204, 404))

    def list(self, bucket: str, prefix: str = "", delimiter: str | None = None, max_keys: int | None = None,
             limit: int | None = None) -> tuple[list[S3Object], list[str]]:
        """(objects, common prefixes) under `prefix`: all pages (of `max_keys` each, default the server's),
        or the first page with at least `limit` entries (an existence check)."""
        objs: list[S3Object] = []
        prefixes: list[str] = []
        for root in self._pages(bucket, prefix, delimiter, max_keys or limit):
            for c in root.iter(f"{_NS}Contents"):
                objs.append(S3Object(c.findtext(f"{_NS}Key") or "", int(c.findtext(f"{_NS}Size") or 0),
                                     (c.findtext(f"{_NS}ETag") or "").strip('"')))
            prefixes += [p.findtext(f"{_NS}Prefix") or "" for p in root.iter(f"{_NS}CommonPrefixes")]
            if limit and len(objs) + len(prefixes) >= limit:
                break
        return objs, prefixes

    def _pages(self, bucket: str, prefix: str, delimiter: str | None, max_keys: int | None
               ) -> Iterator[ET.Element]:
        token = None
        while True:
            q = {"list-type": "2", "prefix": prefix}
            if max_keys:
                q["max-keys"] = str(max_keys)
            if delimiter:
                q["delimiter"] = delimiter
            if token:
                q["continuation-token"] = token
            root = ET.fromstring(self._request("GET", bucket, query=q).data)
            yield root
            if root.findtext(f"{_NS}IsTruncated") != "true":
                return
            token = root.findtext(f"{_NS}NextContinuationToken")

    def check_bucket(self, bucket: str) -> None:
        """Raise the StorageError a user should see when the bucket is missing or not ours to use."""
        self._request("HEAD", bucket)


def _md5_b64(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - S3's integrity header


def _cause(e: Exception) -> str:
    reason = getattr(e, "reason", None)
    return str(reason or e).split(": ", 1)[-1][:200]


def _error(what: str, method: str, status: int, body: bytes) -> StorageError:
    code = message = ""
    if body:
        try:
            root = ET.fromstring(body)
            code, message = root.findtext("Code") or "", root.findtext("Message") or ""
        except ET.ParseError:
            pass
    code = code or str(status)
    text = f"{what}: {method} answered HTTP {status} {code}" + (f" ({message})" if message else "")
    if code in _DENIED or status == 403:
        e: StorageError = StorageAccessDenied(text + ": check the access key, secret key and the bucket's policy")
    elif code in _MISSING or (status == 404 and not code.startswith("X")):
        e = StorageNotFound(text)
    elif status == 412:
        e = StorageConflict(text)
    elif status >= 500:
        e = StorageUnreachable(text)
    else:
        e = StorageError(text)
    e.status, e.code = status, code  # type: ignore[attr-defined]
    return e
