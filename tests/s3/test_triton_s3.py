"""The real Triton (nvidia-pytriton wheel, 2.51.0) reads a model repository from the S3 test server.

Found: ``--model-repository=s3://127.0.0.1:PORT/bucket/prefix`` works over plain HTTP with
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION`` set: the index lists the
models, an explicit load downloads the model folder to a local temporary folder (what the python
backend's ``args["model_repository"]`` then points at) and a later load picks up a version added
since.  Wrong credentials make the server exit at start with ``error: creating server: Internal -
Unable to create S3 filesystem client. Check account credentials.``
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from e2e.triton.server import TritonServer, TritonStartError, available

CONFIG = """name: "add_offset"
backend: "python"
max_batch_size: 0
input [{ name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] }]
output [{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""

# Reads a data file beside it, so the whole version folder must have come down from S3.
MODEL_PY = '''
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "offset.txt")
        with open(path) as f:
            self.offset = float(f.read())
        pb_utils.Logger.log_info(f"add_offset v{args['model_version']} from {path}: {self.offset}")

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (x + self.offset).astype(np.float32))]))
        return out
'''


def upload_version(client, bucket: str, prefix: str, version: int, offset: float) -> None:
    client.put_bytes(bucket, f"{prefix}/add_offset/config.pbtxt", CONFIG.encode())
    client.put_bytes(bucket, f"{prefix}/add_offset/{version}/model.py", MODEL_PY.encode())
    client.put_bytes(bucket, f"{prefix}/add_offset/{version}/offset.txt", str(offset).encode())


def triton_on_s3(s3_server, bucket: str, prefix: str, workdir, *, secret_key: str | None = None) -> TritonServer:
    if not available():
        pytest.fail("nvidia-pytriton (the tritonserver binary) is not installed: run e2e/setup.sh", pytrace=False)
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key or s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
    }
    return TritonServer(f"s3://{s3_server.host}:{s3_server.port}/{bucket}/{prefix}", workdir=workdir, env=env,
                        start_timeout=90)


def call(srv: TritonServer, path: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(f"http://{srv.http_url}{path}", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def infer(srv: TritonServer, xs: list[float]) -> tuple[str, list[float]]:
    status, out = call(srv, "/v2/models/add_offset/infer",
                       {"inputs": [{"name": "INPUT0", "shape": [len(xs)], "datatype": "FP32", "data": xs}]})
    assert status == 200, out
    return out["model_version"], out["outputs"][0]["data"]


def test_triton_serves_a_model_repository_from_s3(s3_server, s3_client, s3_bucket, tmp_path):
    upload_version(s3_client, s3_bucket, "repo", 1, 1.0)
    srv = triton_on_s3(s3_server, s3_bucket, "repo", tmp_path)
    try:
        srv.start()
        assert call(srv, "/v2/repository/index") == (200, [{"name": "add_offset"}])
        assert call(srv, "/v2/repository/models/add_offset/load")[0] == 200, srv.log_tail()
        assert infer(srv, [1, 2, 3]) == ("1", [2.0, 3.0, 4.0])

        # A version published to S3 later is picked up by the next explicit load (policy: latest 1).
        upload_version(s3_client, s3_bucket, "repo", 2, 10.0)
        assert call(srv, "/v2/repository/models/add_offset/load")[0] == 200, srv.log_tail()
        assert infer(srv, [1, 2, 3]) == ("2", [11.0, 12.0, 13.0])
    finally:
        srv.stop()
    assert not srv.alive()


def test_triton_with_wrong_s3_credentials_fails_at_start(s3_server, s3_client, s3_bucket, tmp_path):
    upload_version(s3_client, s3_bucket, "repo", 1, 1.0)
    srv = triton_on_s3(s3_server, s3_bucket, "repo", tmp_path, secret_key="not-the-secret")
    try:
        with pytest.raises(TritonStartError, match="Unable to create S3 filesystem client"):
            srv.start()
    finally:
        srv.stop()
    assert not srv.alive()
