"""Google Cloud Storage: how Lathe opens a bucket (every call is storage/objects.py's ObjectClient).

Credentials: a service-account JSON key, which the operator hands the worker from
`spec.storage.gcs.secretRef` (Secret key `service-account.json`) as GOOGLE_SERVICE_ACCOUNT_KEY;
`spec.storage.gcs.endpoint` (an emulator, a private endpoint) as LATHE_GCS_ENDPOINT; a private CA
(`ca.crt`) as the file LATHE_GCS_CA_BUNDLE. An emulator that takes no token is reached with a key
that says so (`"disable_oauth": true`, object_store's convention); a real key gets its OAuth token
from the key's token_uri.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from . import StorageAccessDenied, StorageError


@dataclass(frozen=True, repr=False)
class GCSSettings:
    service_account_key: str  # the JSON text
    endpoint: str | None = None  # http(s)://host[:port]; None: the key's gcs_base_url, else Google
    ca_bundle: str | None = None
    ca_data: str | None = None
    scheme = "gs"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GCSSettings:
        env = os.environ if env is None else env
        key = env.get("GOOGLE_SERVICE_ACCOUNT_KEY")
        if not key:
            raise StorageAccessDenied("no Google Cloud Storage credentials in this process "
                                      "(GOOGLE_SERVICE_ACCOUNT_KEY); name a Secret in spec.storage.gcs.secretRef")
        endpoint = env.get("LATHE_GCS_ENDPOINT") or None
        return cls(key, endpoint.rstrip("/") if endpoint else None, env.get("LATHE_GCS_CA_BUNDLE") or None)

    def _key(self) -> dict:
        try:
            key = json.loads(self.service_account_key)
        except ValueError:
            raise StorageAccessDenied("the service-account key is not JSON (spec.storage.gcs.secretRef, "
                                      "key service-account.json)") from None
        if not isinstance(key, dict):
            raise StorageAccessDenied("the service-account key is not a JSON object")
        return key

    def __repr__(self) -> str:  # never the key
        try:
            email = self._key().get("client_email")
        except StorageError:
            email = "<not a JSON key>"
        return f"GCSSettings(client_email={email!r}, endpoint={self.endpoint!r})"

    @property
    def where(self) -> str:
        return self.endpoint or "https://storage.googleapis.com"

    def secret_values(self) -> list[str]:
        try:
            key = self._key()
        except StorageError:
            return [self.service_account_key]
        return [v for v in (self.service_account_key, key.get("private_key"), key.get("private_key_id")) if v]

    def open(self, bucket: str, client_options: dict, retry_config: dict):
        from obstore.store import GCSStore  # noqa: PLC0415

        self._key()  # a clear message for a malformed key, before object_store's
        opts = dict(client_options)
        cfg = {"service_account_key": self.service_account_key}
        if self.endpoint:
            cfg["base_url"] = self.endpoint
        if (self.endpoint or self._key().get("gcs_base_url", "")).startswith("http://"):
            opts["allow_http"] = True
        ca = (self.ca_data or "") + (_read(self.ca_bundle) if self.ca_bundle else "")
        if ca.strip():
            opts["root_certificate"] = ca.strip()
        return GCSStore(bucket, config=cfg, client_options=opts, retry_config=retry_config)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return "\n" + f.read()
    except OSError as e:
        raise StorageError(f"CA bundle {path}: {e.strerror}") from None
