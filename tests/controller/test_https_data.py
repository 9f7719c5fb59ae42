"""https:// data end to end short of a Job: the operator lets it through only with a sha256, and the
worker's fetch (lathe.worker.intake.fetch, as the pipeline calls it with spec.data.*.sha256)
downloads it from a real TLS server (self-signed certificate made by openssl, trusted through
SSL_CERT_FILE) and refuses content that does not match."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from lathe.api.spec import ModelOptimizationSpec
from lathe.controller.validate import problems
from lathe.worker.errors import InvalidInput
from lathe.worker.intake import fetch


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    """(base url, served directory, certificate path) of an HTTPS server on 127.0.0.1."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make the server's certificate (Debian: apt-get install openssl)",
                    pytrace=False)
    d = tmp_path_factory.mktemp("https")
    cert, key, root = d / "cert.pem", d / "key.pem", d / "www"
    root.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = None
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        yield f"https://127.0.0.1:{srv.server_address[1]}", root, cert
    finally:
        if t is not None:
            srv.shutdown()
            t.join(5)
        srv.server_close()


@pytest.fixture
def served(https_server, tmp_path, monkeypatch):
    base, root, cert = https_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts this server and nothing else
    monkeypatch.setenv("LATHE_CACHE", str(tmp_path / "cache"))
    x = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    np.savez(root / "val.npz", input=x, labels=np.arange(8))
    body = (root / "val.npz").read_bytes()
    return f"{base}/val.npz", hashlib.sha256(body).hexdigest(), body


def _spec(uri: str, sha256: str | None) -> ModelOptimizationSpec:
    val = {"uri": uri} | ({"sha256": sha256} if sha256 else {})
    return ModelOptimizationSpec.model_validate({"model": {"uri": "pvc://m/model.onnx"},
                                                 "data": {"validation": val, "calibration": val}})


def test_https_data_with_its_sha256_is_accepted_and_fetched_verified(served):
    uri, sha, body = served
    spec = _spec(uri, sha)
    assert problems(spec) == []
    for ds, what in ((spec.data.validation, "validation data"), (spec.data.calibration, "calibration data")):
        path = fetch(ds.uri, ds.sha256, what)
        assert Path(path).read_bytes() == body
    assert sorted(np.load(path).files) == ["input", "labels"]


def test_https_data_with_a_wrong_sha256_is_refused_by_the_worker(served):
    uri, sha, _ = served
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    spec = _spec(uri, wrong)
    assert problems(spec) == []  # the operator cannot know the content; the worker checks it
    with pytest.raises(InvalidInput, match=rf"validation data: sha256 mismatch for {uri}: expected {wrong}, got {sha}"):
        fetch(spec.data.validation.uri, spec.data.validation.sha256, "validation data")


def test_https_data_without_a_sha256_never_reaches_the_worker(served):
    uri, _, _ = served
    spec = _spec(uri, None)
    assert problems(spec) == [
        "spec.data.validation.sha256: required for an https:// data set (the worker verifies what it downloads)",
        "spec.data.calibration.sha256: required for an https:// data set (the worker verifies what it downloads)"]
    with pytest.raises(InvalidInput, match="needs a sha256"):  # and the worker would refuse it anyway
        fetch(spec.data.validation.uri, spec.data.validation.sha256, "validation data")


def test_a_local_data_set_is_verified_when_its_sha256_is_given(tmp_path):
    f = tmp_path / "val.npz"
    np.savez(f, input=np.zeros((2, 1, 8, 8), np.float32))
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    spec = _spec(f"file://{f}", sha)
    assert problems(spec) == []
    assert fetch(spec.data.validation.uri, spec.data.validation.sha256, "validation data") == f
    with pytest.raises(InvalidInput, match="sha256 mismatch"):
        fetch(str(f), "0" * 64, "validation data")
