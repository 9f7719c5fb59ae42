"""Publishing into a Triton model repository on the real S3 server (serving/object_repository.py), and the
real Triton (pytriton wheel) serving what was published from s3://."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest

from lathe.api.spec import Publish
from lathe.serving import publish
from lathe.serving.config import config_versions
from lathe.serving.object_repository import object_versions as s3_versions
from lathe.storage import StorageAccessDenied, StorageNotFound
from tests.s3.test_triton_s3 import call, triton_on_s3


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The worker's view: the AWS variables the operator's Job sets from spec.storage.s3.secretRef."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


def _pub(repo: str, **kw) -> Publish:
    return Publish(repository=repo, model_name="digits", **kw)


def _keys(client, bucket, prefix=""):
    return sorted(o.key for o in client.list(bucket, prefix)[0])


def test_versions_land_whole_and_keep_the_served_policy(s3_env, s3_client, s3_bucket, digits_models, tmp_path):
    repo = f"s3://{s3_bucket}/triton"
    report = tmp_path / "result.json"
    report.write_text('{"winner": "int8"}')
    (tmp_path / "report.html").write_text("<html>report</html>")
    p1 = publish(repo, "digits", [digits_models["fp32"]], "onnxruntime", _pub(repo), "fp32", report_path=report)
    p2 = publish(repo, "digits", [digits_models["int8"]], "onnxruntime", _pub(repo), "int8", report_path=report)
    assert (p1.version, p2.version) == (1, 2)
    assert p2.path == f"s3://{s3_bucket}/triton/digits/2"
    keys = _keys(s3_client, s3_bucket)
    assert keys == ["triton/digits/1/lathe.json", "triton/digits/1/model.onnx", "triton/digits/1/report.html",
                    "triton/digits/1/report.json", "triton/digits/2/lathe.json", "triton/digits/2/model.onnx",
                    "triton/digits/2/report.html", "triton/digits/2/report.json", "triton/digits/config.pbtxt"]
    cfg = s3_client.get_bytes(s3_bucket, "triton/digits/config.pbtxt").decode()
    assert config_versions(cfg) == [1]  # version 2 waits for the rollout to load it
    meta = json.loads(s3_client.get_bytes(s3_bucket, "triton/digits/2/lathe.json"))
    for name, digest in meta["files"].items():
        assert hashlib.sha256(s3_client.get_bytes(s3_bucket, f"triton/digits/2/{name}")).hexdigest() == digest
    assert meta["sha256"] == p2.sha256 == hashlib.sha256(digits_models["int8"].read_bytes()).hexdigest()
    # The same candidate again (an operator restarted between publish and status) is not a new version.
    again = publish(repo, "digits", [digits_models["int8"]], "onnxruntime", _pub(repo), "int8", report_path=report)
    assert again.version == 2 and s3_versions(s3_client, s3_bucket, "triton/digits") == [1, 2]


def test_racing_publishers_never_clobber(s3_env, s3_client, s3_bucket, digits_models):
    repo = f"s3://{s3_bucket}/race"
    n = 5
    results, errors, barrier = {}, [], threading.Barrier(n)

    def go(i):
        barrier.wait(30)
        try:
            results[i] = publish(repo, "digits", [digits_models["int8" if i % 2 else "fp32"]], "onnxruntime",
                                 _pub(repo), f"cand-{i}", reuse_existing=False)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    versions = sorted(p.version for p in results.values())
    assert len(set(versions)) == n, versions  # one number each
    for i, p in results.items():  # and each version holds its own publisher's files, whole
        meta = json.loads(s3_client.get_bytes(s3_bucket, f"race/digits/{p.version}/lathe.json"))
        assert meta["candidate"] == f"cand-{i}"
        body = s3_client.get_bytes(s3_bucket, f"race/digits/{p.version}/model.onnx")
        assert hashlib.sha256(body).hexdigest() == meta["sha256"]
    leftovers = [k for k in _keys(s3_client, s3_bucket, "race/") if ".lathe-" in k]
    assert leftovers == []  # no claim or staging object stays behind


def test_a_stale_claim_costs_a_gap_not_a_clobber(s3_env, s3_client, s3_bucket, digits_models):
    repo = f"s3://{s3_bucket}/stale"
    publish(repo, "digits", [digits_models["fp32"]], "onnxruntime", _pub(repo), "fp32")
    # A publisher that died after claiming version 2 left its claim.
    s3_client.put_bytes(s3_bucket, "stale/digits/.lathe-claims/2/dead-publisher", b"{}")
    p = publish(repo, "digits", [digits_models["int8"]], "onnxruntime", _pub(repo), "int8")
    assert p.version == 3 and s3_versions(s3_client, s3_bucket, "stale/digits") == [1, 3]


def test_store_failures_are_storage_reasons(s3_server, s3_bucket, digits_models, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    with pytest.raises(StorageNotFound, match="NoSuchBucket|404"):
        publish("s3://lathe-no-such-bucket/r", "digits", [digits_models["fp32"]], "onnxruntime",
                _pub("s3://lathe-no-such-bucket/r"), "fp32")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageAccessDenied):
        publish(f"s3://{s3_bucket}/r", "digits", [digits_models["fp32"]], "onnxruntime",
                _pub(f"s3://{s3_bucket}/r"), "fp32")


def test_real_triton_serves_what_was_published_to_s3(s3_env, s3_client, s3_bucket, digits_models, tmp_path):
    repo = f"s3://{s3_bucket}/served"
    publish(repo, "digits", [digits_models["int8"]], "onnxruntime", _pub(repo, flavour="python", max_batch_size=8), "int8")
    srv = triton_on_s3(s3_env, s3_bucket, "served", tmp_path)
    try:
        srv.start()
        assert call(srv, "/v2/repository/models/digits/load")[0] == 200, srv.log_tail()
        x = np.asarray(digits_models["x"][:4], dtype=np.float32)
        status, out = call(srv, "/v2/models/digits/infer", {"inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
        assert status == 200, out
        assert out["model_version"] == "1"
        logits = np.asarray(out["outputs"][0]["data"]).reshape(4, 10)
        assert (logits.argmax(1) == np.asarray(digits_models["y"][:4])).mean() >= 0.75
    finally:
        srv.stop()
    assert not srv.alive()


def test_a_causal_lm_published_to_s3_streams_from_triton(s3_env, s3_client, s3_bucket, tiny_llm, tmp_path):
    """The genai flavour's model folder (graph, external weights, tokenizer) lands whole on S3, and the real
    Triton serving from s3:// streams the tokens onnxruntime-genai gives directly on the same folder."""
    from e2e.triton.generate import generate_stream, greedy

    repo = f"s3://{s3_bucket}/llm"
    p = publish(repo, "lm", tiny_llm["int4"], "onnxruntime-genai", Publish(repository=repo, model_name="lm"), "int4")
    assert (p.version, p.flavour) == (1, "genai")
    assert _keys(s3_client, s3_bucket, "llm/lm/1/") == sorted(
        f"llm/lm/1/{n}" for n in [f.name for f in tiny_llm["int4"].iterdir()] + ["model.py", "lathe.json"])
    srv = triton_on_s3(s3_env, s3_bucket, "llm", tmp_path)
    try:
        srv.start()
        assert call(srv, "/v2/repository/models/lm/load")[0] == 200, srv.log_tail()
        prompt = "Return the number of"
        s = generate_stream(srv.http_url, "lm", {"text_input": prompt, "max_tokens": 16, "stream": True})
        assert s.ids == greedy(tiny_llm["int4"], prompt, 16)
    finally:
        srv.stop()
    assert not srv.alive()
