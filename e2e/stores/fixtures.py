"""pytest fixtures over the three object-store servers, so one test module runs against each:

* ``gcs_server`` (session): a started :class:`~e2e.gcs.fixture.GCSServer` (fake-gcs-server);
* ``azurite_server`` (session): a started :class:`~e2e.azurite.fixture.AzuriteServer`;
* ``store`` (parametrized s3 / gs / az, module-independent): a :class:`Store`: the server, Lathe's client
  for it, a fresh bucket (container), the variables the operator's Job would set in the worker, the
  Secret data and spec.storage entry a resource names, and whether Lathe can write to it (not to
  fake-gcs-server: see e2e/gcs/fixture.py).

Each server is started once per session, on first use, and stopped at its end, also when a start fails.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.azurite.fixture import AzuriteServer
from e2e.controlplane.fixture import register_log
from e2e.gcs.fixture import GCSServer
from e2e.stores.server import ServerError

SCHEMES = ("s3", "gs", "az")


def _session_server(server_cls, tmp_path_factory, name: str):
    server = server_cls(tmp_path_factory.mktemp(name))
    register_log(name, server.log_path)
    try:
        try:
            server.start()
        except ServerError as e:
            pytest.fail(str(e), pytrace=False)
        yield server
    finally:
        server.stop()
        register_log(name, None)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    yield from _session_server(GCSServer, tmp_path_factory, "gcs-fake-gcs-server")


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory):
    yield from _session_server(AzuriteServer, tmp_path_factory, "azure-azurite")


@dataclass
class Store:
    scheme: str  # s3, gs, az
    server: Any
    client: Any  # lathe.storage.objects.ObjectClient
    bucket: str
    writable: bool  # can Lathe (obstore) write to this server?

    @property
    def field(self) -> str:  # spec.storage.<field>
        return {"s3": "s3", "gs": "gcs", "az": "azure"}[self.scheme]

    def uri(self, key: str = "") -> str:
        return self.client.uri(self.bucket, key)

    def seed(self, key: str, data: bytes) -> None:
        """Put an object there, through Lathe where Lathe can write, else the server's own API."""
        if self.writable:
            self.client.put_bytes(self.bucket, key, data)
        else:
            self.server.upload(self.bucket, key, data)

    def new_bucket(self) -> str:
        return self.server.make_bucket(f"lathe-{uuid.uuid4().hex[:12]}")

    def worker_env(self) -> dict[str, str]:
        """What the operator's Job sets in the worker from spec.storage.<field> and its Secret."""
        return self.server.env() if self.scheme == "s3" else self.server.worker_env()

    def secret_data(self) -> dict[str, str]:
        if self.scheme == "s3":
            s = self.server
            return {"AWS_ACCESS_KEY_ID": s.access_key, "AWS_SECRET_ACCESS_KEY": s.secret_key, "AWS_REGION": s.region}
        if self.scheme == "gs":
            return {"service-account.json": self.server.key_json()}
        return {"AZURE_STORAGE_ACCOUNT_NAME": self.server.account, "AZURE_STORAGE_ACCOUNT_KEY": self.server.key}

    def spec_storage(self, secret: str) -> dict[str, Any]:
        return {self.field: {"secretRef": secret, "endpoint": self.server.endpoint}}

    def secret_values(self) -> list[str]:
        return self.client.settings.secret_values()


@pytest.fixture(params=SCHEMES)
def store(request) -> Store:
    scheme = request.param
    if scheme == "s3":
        server = request.getfixturevalue("s3_server")
        client = server.client()
    elif scheme == "gs":
        server = request.getfixturevalue("gcs_server")
        client = server.client()
    else:
        server = request.getfixturevalue("azurite_server")
        client = server.client()
    bucket = server.make_bucket(f"lathe-{uuid.uuid4().hex[:12]}")
    return Store(scheme, server, client, bucket, writable=scheme != "gs")
