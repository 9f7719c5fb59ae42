"""Which object stores the real Triton (nvidia-pytriton 0.7.0's Triton 2.51.0) reads a model repository
from, against the same emulators Lathe is tested with (s3:// is tests/s3/test_triton_s3.py):

- gs://: yes. Its Cloud Storage client (google-cloud-cpp) goes to fake-gcs-server when
  CLOUD_STORAGE_EMULATOR_ENDPOINT is set (GOOGLE_APPLICATION_CREDENTIALS must name a key file); the
  index lists the models, an explicit load downloads the version, a version added later is picked up.
- as://: no. Triton builds https://<account>.blob.core.windows.net from as://<account>/<container>/...
  and has no endpoint setting, so it never reaches Azurite: the server aborts at start (SIGABRT) with
  ``Azure::Core::Http::TransportException ... Fail to get a new connection for:
  https://<account>.blob.core.windows.net. Couldn't resolve host name``. Lathe therefore refuses an az://
  Triton repository (controller/validate.py), rather than publish what it cannot show Triton serving.
"""

from __future__ import annotations

import pytest

from e2e.triton.server import TritonServer, TritonStartError, available
from tests.s3.test_triton_s3 import CONFIG, MODEL_PY, call, infer


def _need_triton():
    if not available():
        pytest.fail("nvidia-pytriton (the tritonserver binary) is not installed: run e2e/setup.sh", pytrace=False)


def _version(upload, prefix: str, version: int, offset: float) -> None:
    upload(f"{prefix}/add_offset/config.pbtxt", CONFIG.encode())
    upload(f"{prefix}/add_offset/{version}/model.py", MODEL_PY.encode())
    upload(f"{prefix}/add_offset/{version}/offset.txt", str(offset).encode())


def test_triton_serves_a_model_repository_from_gcs(gcs_server, tmp_path):
    _need_triton()
    bucket = gcs_server.make_bucket("lathe-triton-gcs")
    upload = lambda key, data: gcs_server.upload(bucket, key, data)  # noqa: E731
    _version(upload, "repo", 1, 1.0)
    srv = TritonServer(f"gs://{bucket}/repo", workdir=tmp_path, env=gcs_server.triton_env(tmp_path), start_timeout=90)
    try:
        srv.start()
        assert call(srv, "/v2/repository/index") == (200, [{"name": "add_offset"}])
        assert call(srv, "/v2/repository/models/add_offset/load")[0] == 200, srv.log_tail()
        assert infer(srv, [1, 2, 3]) == ("1", [2.0, 3.0, 4.0])
        _version(upload, "repo", 2, 10.0)  # a version added later is picked up by the next explicit load
        assert call(srv, "/v2/repository/models/add_offset/load")[0] == 200, srv.log_tail()
        assert infer(srv, [1, 2, 3]) == ("2", [11.0, 12.0, 13.0])
    finally:
        srv.stop()
    assert not srv.alive()


def test_triton_cannot_reach_an_azure_emulator(azurite_server, tmp_path):
    _need_triton()
    az = azurite_server
    container = az.make_container("lathe-triton-az")
    client = az.client()
    _version(lambda key, data: client.put_bytes(container, key, data), "repo", 1, 1.0)
    srv = TritonServer(f"as://{az.account}/{container}/repo", workdir=tmp_path, start_timeout=90,
                       env={"AZURE_STORAGE_ACCOUNT": az.account, "AZURE_STORAGE_KEY": az.key})
    try:
        with pytest.raises(TritonStartError, match=rf"Fail to get a new connection for: "
                                                   rf"https://{az.account}\.blob\.core\.windows\.net"):
            srv.start()
    finally:
        srv.stop()
    assert not srv.alive()
