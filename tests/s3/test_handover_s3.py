"""A split search's hand-over (lathe.worker.handover) on the real S3 server: a build Job's candidate folder and
manifest written under spec.artifacts = s3://..., read back by the benchmark Job with every file's sha256
checked, a retried attempt finding what was handed over, and older generations removed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lathe.api.status import CandidateResult
from lathe.worker.backends.base import Artifact
from lathe.worker.errors import WorkerError
from lathe.worker.handover import (
    Store,
    fetch_candidate,
    get_manifest,
    get_record,
    put_candidate,
    put_manifest,
)


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """The worker's view: the AWS variables the operator's Job sets from spec.storage.s3.secretRef."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


def built_candidate(tmp_path):
    cdir = tmp_path / "work" / "candidates" / "ov-int8"
    cdir.mkdir(parents=True)
    (cdir / "model.xml").write_text("<net/>")
    (cdir / "model.bin").write_bytes(bytes(range(256)) * 64)
    (cdir / "openvino.json").write_text('{"quantized": true}')
    art = Artifact(runtime="openvino", files=[cdir / "model.xml", cdir / "model.bin"], meta={"quantized": True})
    res = CandidateResult(name="ov-int8", runtime="openvino", verdict="passed", accuracy=0.98,
                          artifact=str(cdir / "model.xml"))
    return SimpleNamespace(result=res, artifact=art, runner=object(), details={"precision_nodes": {"conv": "INT8"}}), cdir


def test_a_candidate_handed_over_through_s3_and_read_back_checked(s3_env, s3_client, s3_bucket, tmp_path):
    base = f"s3://{s3_bucket}/lathe/ml/digits/generation-3/shards"
    store = Store(base)
    assert get_record(store, 2, "ov-int8") is None  # nothing yet: a first attempt builds everything
    built, cdir = built_candidate(tmp_path)
    rec = put_candidate(store, 2, built, cdir)
    put_manifest(store, 2, 2, None, ["ort", "ov-int8"], ["ov-int8"], {"accuracy": 0.98}, 12.0)
    keys = sorted(o.key for o in s3_client.list(s3_bucket, "lathe/ml/digits/generation-3/shards/")[0])
    assert keys == [f"lathe/ml/digits/generation-3/shards/shard-2/{n}" for n in
                    ("manifest.json", "ov-int8/candidate.json", "ov-int8/model.bin", "ov-int8/model.xml",
                     "ov-int8/openvino.json")]
    # the benchmark Job's side, on another "node"
    reader = Store(base)
    again = get_record(reader, 2, "ov-int8")
    assert again.artifact_files == ["model.xml", "model.bin"] and again.runnable and again.meta == {"quantized": True}
    assert again.sha256 == rec.sha256 and get_manifest(reader, 2)["candidates"] == ["ov-int8"]
    fetch_candidate(reader, 2, again, tmp_path / "bench" / "ov-int8")
    assert (tmp_path / "bench/ov-int8/model.bin").read_bytes() == (cdir / "model.bin").read_bytes()
    # a corrupted object is refused, not benchmarked
    s3_client.put_bytes(s3_bucket, "lathe/ml/digits/generation-3/shards/shard-2/ov-int8/model.bin", b"truncated")
    with pytest.raises(WorkerError, match="model.bin: sha256 .* is not the .* its build Job recorded"):
        fetch_candidate(reader, 2, again, tmp_path / "bench2" / "ov-int8")
    # what the benchmark Job of a newer generation removes
    root = Store(f"s3://{s3_bucket}/lathe/ml/digits")
    assert list(root.folders("")) == ["generation-3"]
    root.remove("generation-3/shards")
    assert s3_client.list(s3_bucket, "lathe/ml/digits/")[0] == []
