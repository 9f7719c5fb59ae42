"""S3 and S3-compatible stores (AWS, MinIO, Ceph, versitygw): how Lathe opens one. Every call is
storage/objects.py's ObjectClient over obstore; this module holds the settings only.

Credentials and endpoint come from the standard AWS variables, which is what the operator sets in the
worker pod from `spec.storage.s3.secretRef` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional
AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_CA_BUNDLE). A custom
endpoint is addressed path-style (MinIO, Ceph, versitygw); AWS itself virtual-hosted style. A private
CA (a file, or PEM data the operator holds in memory) is added to the trusted roots.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from . import StorageAccessDenied, StorageError
from .objects import ObjectClient, ObjectInfo

S3Object = ObjectInfo  # the name callers of the first S3 client know


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
    scheme = "s3"

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

    @property
    def where(self) -> str:
        if self.endpoint:
            u = urllib.parse.urlsplit(self.endpoint)
            return f"{u.scheme}://{u.netloc}"
        return f"https://s3.{self.region}.amazonaws.com"

    def secret_values(self) -> list[str]:
        return [v for v in (self.secret_key, self.session_token) if v]

    def root_certificate(self) -> str | None:
        pem = self.ca_data or ""
        if self.ca_bundle:
            try:
                pem += "\n" + open(self.ca_bundle).read()
            except OSError as e:
                raise StorageError(f"AWS_CA_BUNDLE {self.ca_bundle}: {e.strerror}") from None
        return pem.strip() or None

    def open(self, bucket: str, client_options: dict, retry_config: dict):
        from obstore.store import S3Store  # noqa: PLC0415

        if self.endpoint:
            u = urllib.parse.urlsplit(self.endpoint)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise StorageError(f"S3 endpoint {self.endpoint!r}: expected http(s)://host[:port]")
        opts = dict(client_options)
        if self.endpoint and self.endpoint.startswith("http://"):
            opts["allow_http"] = True
        ca = self.root_certificate()
        if ca:
            opts["root_certificate"] = ca
        # Every value given here, so no AWS_* variable of this process (obstore reads them) mixes in.
        cfg = {"access_key_id": self.access_key, "secret_access_key": self.secret_key, "region": self.region,
               "virtual_hosted_style_request": self.endpoint is None, "conditional_put": "etag",
               "disable_tagging": True}
        if self.endpoint:
            cfg["endpoint"] = self.endpoint
        if self.session_token:
            cfg["session_token"] = self.session_token
        return S3Store(bucket, config=cfg, client_options=opts, retry_config=retry_config)

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


class S3Client(ObjectClient):
    """Lathe's S3 client: the store-independent ObjectClient (storage/objects.py) opened with S3Settings."""

    def __init__(self, settings: S3Settings | None = None, **kw):
        super().__init__(settings or S3Settings.from_env(), **kw)
