"""Which client serves an object-store location: s3://, gs:// or az:// -> an ObjectClient opened with
that store's settings from this process's environment (what the operator's Job sets from
spec.storage.<store>). Callers that hold settings of their own (the operator, tests) pass a client."""

from __future__ import annotations

from collections.abc import Mapping

from . import StorageError
from .objects import ObjectClient
from .uri import parse_uri

OBJECT_SCHEMES = {"s3": "s3", "gs": "gcs", "az": "azure"}  # URI scheme -> spec.storage field


def is_object_uri(uri: str) -> bool:
    return str(uri).split("://", 1)[0] in OBJECT_SCHEMES and "://" in str(uri)


def split(uri: str) -> tuple[str, str, str]:
    """s3://bucket/key (gs://, az://container/...) -> (scheme, bucket, key); key may be empty."""
    try:
        scheme, bucket, key = parse_uri(str(uri))
    except ValueError as e:
        raise StorageError(str(e)) from None
    if scheme not in OBJECT_SCHEMES:
        raise StorageError(f"{uri}: not an object-store location (s3://, gs:// or az://)")
    return scheme, bucket, key


def client_for(scheme: str, env: Mapping[str, str] | None = None, **kw) -> ObjectClient:
    if scheme == "s3":
        from .s3 import S3Settings  # noqa: PLC0415

        return ObjectClient(S3Settings.from_env(env), **kw)
    if scheme == "gs":
        from .gcs import GCSSettings  # noqa: PLC0415

        return ObjectClient(GCSSettings.from_env(env), **kw)
    if scheme == "az":
        from .azure import AzureSettings  # noqa: PLC0415

        return ObjectClient(AzureSettings.from_env(env), **kw)
    raise StorageError(f"{scheme}://: not an object store")


def client_for_uri(uri: str, client: ObjectClient | None = None) -> tuple[ObjectClient, str, str]:
    """(client, bucket, key) for an object-store URI; `client` when given must serve its scheme."""
    scheme, bucket, key = split(uri)
    if client is None:
        client = client_for(scheme)
    elif client.scheme != scheme:
        raise StorageError(f"{uri}: a {client.scheme}:// client cannot serve {scheme}://")
    return client, bucket, key
