"""The operator's own object-store access for a rollout from an s3://, gs:// or az:// repository (it
rewrites config.pbtxt and the router model there) and for production captures. Values are read from
spec.storage.<store>.secretRef when needed, kept in memory only (a CA as PEM data, never a file) and
never logged."""

from __future__ import annotations

import base64

from kubernetes.client.rest import ApiException

from lathe.api.spec import Storage
from lathe.storage import StorageAccessDenied
from lathe.storage.clients import OBJECT_SCHEMES, is_object_uri
from lathe.storage.objects import ObjectClient
from lathe.storage.s3 import S3Client, S3Settings

from . import kube


def _secret(name: str, namespace: str) -> dict[str, str]:
    try:
        sec = kube.call(kube.core().read_namespaced_secret, name, namespace)
    except ApiException as e:
        raise StorageAccessDenied(f"Secret {name!r} in {namespace}: {e.status} {kube.api_message(e)}") from None
    return {k: base64.b64decode(v).decode() for k, v in (sec.get("data") or {}).items()}


def s3_client_for(storage: Storage | None, namespace: str) -> S3Client | None:
    s3 = storage.s3 if storage else None
    if s3 is None:
        return None
    data = _secret(s3.secret_ref, namespace)
    if not data.get("AWS_ACCESS_KEY_ID") or not data.get("AWS_SECRET_ACCESS_KEY"):
        raise StorageAccessDenied(f"Secret {s3.secret_ref!r} lacks AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY")
    endpoint = s3.endpoint or data.get("AWS_ENDPOINT_URL") or None
    settings = S3Settings(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"],
                          s3.region or data.get("AWS_REGION") or "us-east-1",
                          endpoint.rstrip("/") if endpoint else None, None, data.get("AWS_SESSION_TOKEN") or None,
                          ca_data=data.get("ca.crt") or None)
    return S3Client(settings)


def gcs_client_for(storage: Storage | None, namespace: str) -> ObjectClient | None:
    from lathe.storage.gcs import GCSSettings  # noqa: PLC0415

    gcs = storage.gcs if storage else None
    if gcs is None:
        return None
    data = _secret(gcs.secret_ref, namespace)
    if not data.get("service-account.json"):
        raise StorageAccessDenied(f"Secret {gcs.secret_ref!r} lacks service-account.json")
    return ObjectClient(GCSSettings(data["service-account.json"], gcs.endpoint.rstrip("/") if gcs.endpoint else None,
                                    ca_data=data.get("ca.crt") or None))


def azure_client_for(storage: Storage | None, namespace: str) -> ObjectClient | None:
    from lathe.storage.azure import AzureSettings  # noqa: PLC0415

    az = storage.azure if storage else None
    if az is None:
        return None
    data = _secret(az.secret_ref, namespace)
    account = data.get("AZURE_STORAGE_ACCOUNT_NAME")
    key, sas = data.get("AZURE_STORAGE_ACCOUNT_KEY") or None, data.get("AZURE_STORAGE_SAS_TOKEN") or None
    if not account or not (key or sas):
        raise StorageAccessDenied(f"Secret {az.secret_ref!r} lacks AZURE_STORAGE_ACCOUNT_NAME, or both "
                                  "AZURE_STORAGE_ACCOUNT_KEY and AZURE_STORAGE_SAS_TOKEN")
    return ObjectClient(AzureSettings(account, key, sas, az.endpoint.rstrip("/") if az.endpoint else None,
                                      ca_data=data.get("ca.crt") or None))


def client_for_location(uri: str | None, storage: Storage | None, namespace: str) -> ObjectClient | None:
    """The operator's client for an object-store location (None for a folder); a store without
    spec.storage settings is refused as StorageAccessDenied (validation refuses it before any Job)."""
    if not uri or not is_object_uri(uri):
        return None
    scheme = uri.split("://", 1)[0]
    make = {"s3": s3_client_for, "gs": gcs_client_for, "az": azure_client_for}[scheme]
    client = make(storage, namespace)
    if client is None:
        raise StorageAccessDenied(f"{uri}: no spec.storage.{OBJECT_SCHEMES[scheme]} credentials for it")
    return client
