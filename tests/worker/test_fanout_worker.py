"""The worker's two halves of a split search on the real digits CNN: `lathe worker --build-only --shard K/N`
hands each share over through spec.artifacts, `lathe worker --benchmark N` reads them back and times them
together. Real torch and ONNX Runtime; a short benchmark (the fan-out is under test, not the speed)."""

from __future__ import annotations

import json
import shutil

import pytest

from lathe.api.status import Verdict
from lathe.worker.errors import InvalidInput, WorkerError
from lathe.worker.main import worker_main
from lathe.worker.shard_run import benchmark_shards, build_shard

CANDIDATES = [
    {"name": "ort-all", "passes": [{"type": "graph-optimize", "level": "all"}]},
    {"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static",
                                        "perChannel": True}]},
    {"name": "int8-dynamic", "passes": [{"type": "quantize", "precision": "int8", "mode": "dynamic"}]},
]


IDENTITY = {"LATHE_RESOURCE": "ml/digits", "LATHE_GENERATION": "7"}  # what the operator's Job sets


@pytest.fixture()
def identity(monkeypatch):
    for k, v in IDENTITY.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LATHE_GPU_ARCH", raising=False)
    monkeypatch.delenv("LATHE_FAILED_SHARDS", raising=False)


def spec_with(make_spec, digits, artifacts):
    return make_spec(digits, candidates=CANDIDATES, target={"runtimes": ["onnxruntime"], "batchSizes": [1]},
                     budget={"maxAccuracyDrop": 0.02, "minSpeedup": 0}, artifacts=str(artifacts),
                     search={"parallelism": 2})


@pytest.fixture(scope="module")
def handed_over(digits, make_spec, tmp_path_factory):
    """Both build Jobs' hand-overs, made once for the module; tests work on copies."""
    root = tmp_path_factory.mktemp("fanout")
    spec = spec_with(make_spec, digits, root / "artifacts")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in IDENTITY.items():
            mp.setenv(k, v)
        mp.delenv("LATHE_GPU_ARCH", raising=False)
        summaries = [build_shard(spec, root / f"b{k}", k, 2) for k in (1, 2)]
    return root / "artifacts", summaries


@pytest.fixture()
def artifacts(handed_over, tmp_path):
    shutil.copytree(handed_over[0], tmp_path / "artifacts")
    return tmp_path / "artifacts"


@pytest.fixture()
def split_spec(digits, make_spec, artifacts):
    return spec_with(make_spec, digits, artifacts)


def test_two_build_jobs_then_one_benchmark_build_each_candidate_once(handed_over, split_spec, artifacts, tmp_path,
                                                                     identity):
    s1, s2 = handed_over[1]
    mine = [[c["name"] for c in s["candidates"]] for s in (s1, s2)]
    assert sorted(mine[0] + mine[1]) == sorted(c["name"] for c in CANDIDATES)  # each exactly once
    assert mine[0] == ["int8-static"]  # the longest expected (calibration) alone: as much as the two others
    assert s1["handover"].endswith("/ml/digits/generation-7/shards/shard-1")
    hand = artifacts / "ml/digits/generation-7/shards"
    for k, names in enumerate(mine, start=1):
        assert json.loads((hand / f"shard-{k}/manifest.json").read_text())["candidates"] == names
        for n in names:
            assert (hand / f"shard-{k}/{n}/candidate.json").is_file() and (hand / f"shard-{k}/{n}/model.onnx").is_file()
    older = artifacts / "ml/digits/generation-6/shards/shard-1/ort-all"  # a superseded generation's hand-over
    older.mkdir(parents=True)
    (artifacts / "ml/digits/generation-6/result.json").write_text("{}")
    result = benchmark_shards(split_spec, tmp_path / "bench", 2, {}, bench_seconds=1)
    assert [c.name for c in result.candidates] == [c["name"] for c in CANDIDATES]  # the spec's order, as one Job
    assert not (artifacts / "ml/digits/generation-6/shards").exists()  # removed once this generation is through
    assert (artifacts / "ml/digits/generation-6/result.json").exists() and hand.exists()  # reports and its own kept
    for c in result.candidates:
        assert c.verdict == Verdict.passed, (c.name, c.reason)
        assert c.speedup is not None and c.latency  # timed here, against this Job's baseline
        assert c.artifact.startswith(str(tmp_path / "bench"))  # read back into this Job's workdir
    assert result.winner is not None and (tmp_path / "bench/report.html").is_file()
    assert "int8-static" in json.loads((tmp_path / "bench/details.json").read_text())["candidates"]


def test_a_retried_build_job_reuses_what_its_killed_attempt_handed_over(handed_over, split_spec, artifacts,
                                                                       tmp_path, identity):
    hand = artifacts / "ml/digits/generation-7/shards/shard-2"
    (hand / "manifest.json").unlink()  # as if killed after handing its candidates over
    again = build_shard(split_spec, tmp_path / "a2", 2, 2)
    assert again["reused"] == [c["name"] for c in handed_over[1][1]["candidates"]]
    assert not (tmp_path / "a2/candidates").exists()  # nothing rebuilt
    assert (hand / "manifest.json").is_file()


def test_a_tampered_hand_over_is_refused(split_spec, artifacts, tmp_path, identity):
    (model,) = (artifacts / "ml/digits/generation-7/shards").glob("shard-*/ort-all/model.onnx")
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(WorkerError, match="sha256 .* is not the .* its build Job recorded"):
        benchmark_shards(split_spec, tmp_path / "bench", 2, {}, bench_seconds=1)


def test_storage_the_benchmark_job_cannot_see_is_named(split_spec, artifacts, tmp_path, identity):
    shutil.rmtree(artifacts / "ml/digits/generation-7/shards/shard-2")  # on a node the benchmark cannot see
    with pytest.raises(InvalidInput, match="build Job 2/2 finished but its hand-over is not at .*ReadWriteMany"):
        benchmark_shards(split_spec, tmp_path / "bench", 2, {}, bench_seconds=1)


def test_the_cli_modes_and_a_failed_shard_reported_per_candidate(digits, make_spec, tmp_path, identity, monkeypatch):
    split_spec = spec_with(make_spec, digits, tmp_path / "artifacts")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(split_spec.model_dump_json(by_alias=True, exclude_none=True))
    term = tmp_path / "term"
    assert worker_main(["--spec", str(spec_file), "--workdir", str(tmp_path / "b1"), "--termination-log",
                        str(term), "--build-only", "--shard", "1/2"]) == 0
    summary = json.loads(term.read_text())
    assert summary["shard"] == 1 and [c["name"] for c in summary["candidates"]] == ["int8-static"]
    assert summary["candidates"][0]["verdict"] == "passed"
    monkeypatch.setenv("LATHE_FAILED_SHARDS", json.dumps({"2": "Job digits-g7-a3-b2, exit code 137, OOMKilled"}))
    assert worker_main(["--spec", str(spec_file), "--workdir", str(tmp_path / "bench"), "--termination-log",
                        str(term), "--benchmark", "2", "--bench-seconds", "1"]) == 0
    doc = json.loads(term.read_text())
    by = {c["name"]: c for c in doc["candidates"]}
    lost = [n for n in by if n not in [c["name"] for c in summary["candidates"]]]
    assert lost == ["ort-all", "int8-dynamic"]  # shard 2's, in the spec's order
    for n in lost:
        assert by[n]["verdict"] == "failed"
        assert by[n]["reason"].startswith("build Job 2/2 failed: Job digits-g7-a3-b2, exit code 137"), by[n]
    assert all(by[c["name"]]["verdict"] == "passed" for c in summary["candidates"])
    assert worker_main(["--spec", str(spec_file), "--workdir", str(tmp_path / "x"), "--termination-log",
                        str(term), "--build-only", "--shard", "3/2"]) == 2
    assert "want K/N" in json.loads(term.read_text())["error"]


def test_build_jobs_that_searched_another_list_are_refused_by_name(split_spec, artifacts, tmp_path, identity):
    manifest = artifacts / "ml/digits/generation-7/shards/shard-2/manifest.json"
    doc = json.loads(manifest.read_text())
    doc["all"] = doc["all"][:-1]  # as a GPU of another compute capability's default set would be
    manifest.write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match="build Job 2/2 searched .*name spec.candidates, or pin the GPUs"):
        benchmark_shards(split_spec, tmp_path / "bench", 2, {}, bench_seconds=1)
