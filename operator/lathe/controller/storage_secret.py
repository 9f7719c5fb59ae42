"""The operator's own S3 access for a rollout from an s3:// repository: the rollout rewrites
config.pbtxt and the router model there. Values are read from spec.storage.s3.secretRef when needed,
kept in memory only (the CA as PEM data, never a file) and never logged."""

from __future__ import annotations

import base64

from kubernetes.client.rest import ApiException

from lathe.api.spec import Storage
from lathe.storage import StorageAccessDenied
from lathe.storage.s3 import S3Client, S3Settings

from . import kube


def s3_client_for(storage: Storage | None, namespace: str) -> S3Client | None:
    s3 = storage.s3 if storage else None
    if s3 is None:
        return None
    try:
        sec = kube.call(kube.core().read_namespaced_secret, s3.secret_ref, namespace)
    except ApiException as e:
        raise StorageAccessDenied(f"Secret {s3.secret_ref!r} in {namespace}: {e.status} {kube.api_message(e)}") from None
    data = {k: base64.b64decode(v).decode() for k, v in (sec.get("data") or {}).items()}
    if not data.get("AWS_ACCESS_KEY_ID") or not data.get("AWS_SECRET_ACCESS_KEY"):
        raise StorageAccessDenied(f"Secret {s3.secret_ref!r} lacks AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY")
    endpoint = s3.endpoint or data.get("AWS_ENDPOINT_URL") or None
    settings = S3Settings(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"],
                          s3.region or data.get("AWS_REGION") or "us-east-1",
                          endpoint.rstrip("/") if endpoint else None, None, data.get("AWS_SESSION_TOKEN") or None,
                          ca_data=data.get("ca.crt") or None)
    return S3Client(settings)
