"""Azure Blob Storage: how Lathe opens a container (every call is storage/objects.py's ObjectClient).
Locations are `az://container/path`; the storage account comes with the credentials.

The operator hands the worker `spec.storage.azure.secretRef`'s keys AZURE_STORAGE_ACCOUNT_NAME and
AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN (by secretKeyRef), `spec.storage.azure.endpoint`
as AZURE_STORAGE_ENDPOINT (an emulator such as Azurite: http://host:10000/<account>; default
https://<account>.blob.core.windows.net) and a private CA (`ca.crt`) as the file LATHE_AZURE_CA_BUNDLE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from . import StorageAccessDenied, StorageError


@dataclass(frozen=True, repr=False)
class AzureSettings:
    account: str
    key: str | None = None  # the account key (base64), or
    sas_token: str | None = None  # a SAS token (percent-encoded query string, with or without '?')
    endpoint: str | None = None
    ca_bundle: str | None = None
    ca_data: str | None = None
    scheme = "az"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AzureSettings:
        env = os.environ if env is None else env
        account = env.get("AZURE_STORAGE_ACCOUNT_NAME")
        key, sas = env.get("AZURE_STORAGE_ACCOUNT_KEY") or None, env.get("AZURE_STORAGE_SAS_TOKEN") or None
        if not account or not (key or sas):
            raise StorageAccessDenied("no Azure Blob Storage credentials in this process (AZURE_STORAGE_ACCOUNT_NAME "
                                      "and AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN); name a Secret "
                                      "in spec.storage.azure.secretRef")
        endpoint = env.get("AZURE_STORAGE_ENDPOINT") or None
        return cls(account, key, sas, endpoint.rstrip("/") if endpoint else None,
                   env.get("LATHE_AZURE_CA_BUNDLE") or None)

    def __repr__(self) -> str:  # never the key or token
        return (f"AzureSettings(account={self.account!r}, auth={'key' if self.key else 'sas'}, "
                f"endpoint={self.endpoint!r})")

    @property
    def where(self) -> str:
        return self.endpoint or f"https://{self.account}.blob.core.windows.net"

    def secret_values(self) -> list[str]:
        out = [v for v in (self.key, self.sas_token) if v]
        if self.sas_token:  # its signature alone, as it may appear decoded or re-encoded
            out += [p.split("=", 1)[1] for p in self.sas_token.lstrip("?").split("&") if p.startswith("sig=")]
        return out

    def open(self, bucket: str, client_options: dict, retry_config: dict):
        from obstore.store import AzureStore  # noqa: PLC0415

        opts = dict(client_options)
        cfg: dict = {"account_name": self.account}
        if self.key:
            cfg["account_key"] = self.key
        else:
            cfg["sas_key"] = (self.sas_token or "").lstrip("?")
        if self.endpoint:
            if not self.endpoint.startswith(("http://", "https://")):
                raise StorageError(f"Azure endpoint {self.endpoint!r}: expected http(s)://host[:port][/account]")
            cfg["endpoint"] = self.endpoint
            if self.endpoint.startswith("http://"):
                opts["allow_http"] = True
        ca = (self.ca_data or "") + (_read(self.ca_bundle) if self.ca_bundle else "")
        if ca.strip():
            opts["root_certificate"] = ca.strip()
        return AzureStore(bucket, config=cfg, client_options=opts, retry_config=retry_config)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return "\n" + f.read()
    except OSError as e:
        raise StorageError(f"CA bundle {path}: {e.strerror}") from None
