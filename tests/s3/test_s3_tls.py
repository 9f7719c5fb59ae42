"""An S3 store behind a private CA (HTTPS with a certificate the system does not trust): the client
verifies it with the CA the Secret's ca.crt provides, as a file (the worker: AWS_CA_BUNDLE) or as PEM
data (the operator, which never writes it to disk), and refuses it without."""

from __future__ import annotations

import pytest

from e2e.s3.fixture import S3Server
from lathe.storage import StorageUnreachable
from lathe.storage.s3 import S3Client, S3Settings


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3tls"), tls=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()
    assert not server.alive()


def _settings(server, **kw) -> S3Settings:
    return S3Settings(server.access_key, server.secret_key, server.region, server.endpoint, **kw)


def test_private_ca_as_file_or_data_and_refused_without(tls_server):
    assert tls_server.endpoint.startswith("https://")
    bucket = tls_server.make_bucket("tls-bucket")
    by_file = S3Client(_settings(tls_server, ca_bundle=str(tls_server.ca_path)))
    by_file.put_bytes(bucket, "m/model.onnx", b"weights")
    by_data = S3Client(_settings(tls_server, ca_data=tls_server.ca_path.read_text()))
    assert by_data.get_bytes(bucket, "m/model.onnx") == b"weights"
    untrusted = S3Client(_settings(tls_server), retries=0)
    with pytest.raises(StorageUnreachable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        untrusted.head(bucket, "m/model.onnx")
    assert tls_server.secret_key not in repr(by_file.settings)


def test_settings_from_the_worker_environment(tls_server, monkeypatch):
    env = {"AWS_ACCESS_KEY_ID": tls_server.access_key, "AWS_SECRET_ACCESS_KEY": tls_server.secret_key,
           "AWS_ENDPOINT_URL": tls_server.endpoint + "/", "AWS_CA_BUNDLE": str(tls_server.ca_path),
           "AWS_REGION": "us-east-1"}
    s = S3Settings.from_env(env)
    assert (s.endpoint, s.ca_bundle, s.region) == (tls_server.endpoint, str(tls_server.ca_path), "us-east-1")
    assert S3Client(s).list(tls_server.make_bucket("tls-env")) == ([], [])
