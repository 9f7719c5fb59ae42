"""A causal-LM search split over build Jobs (issue 23 on issue 22's pipeline), the worker's two halves on the real
SmolLM2-135M: two build shards each build and judge their share and hand its model folder over through
spec.artifacts; the benchmark half reads both back (sha256 checked), times them against the baseline and selects.
The table must be the one a single Job gives for the same spec: the same candidates, verdict inputs and figures.
(The operator's side of the split, Job names, retries and placement, is the generic one: tests/architectures.)"""

from __future__ import annotations

import json

import pytest

from tests.llm.conftest import WINDOW


@pytest.fixture()
def lm_spec(smollm2, tmp_path):
    from lathe.api.spec import parse_spec
    from lathe.worker.llm.example import example_spec

    def make(parallelism: int):
        doc = example_spec(tmp_path / "in", validation_windows=2, calibration_windows=1)
        doc["task"]["windowTokens"] = WINDOW
        doc["target"] = {"promptTokens": [16], "streams": 2}
        doc["candidates"] = [
            {"name": "int8", "runtime": "onnxruntime-genai", "passes": [{"type": "quantize", "precision": "int8"}]},
            {"name": "int4-rtn", "runtime": "onnxruntime-genai",
             "passes": [{"type": "quantize", "precision": "int4"}]}]
        doc["search"] = {"parallelism": parallelism}
        doc["artifacts"] = str(tmp_path / "artifacts")
        return parse_spec(doc)
    return make


def test_split_causal_lm_search_hands_over_folders_and_gives_the_single_jobs_table(lm_spec, tmp_path, monkeypatch):
    from lathe.worker.shard_run import benchmark_shards, build_shard
    from lathe.worker.tasks import run

    monkeypatch.setenv("LATHE_RESOURCE", "ml/smollm2")
    monkeypatch.setenv("LATHE_GENERATION", "1")
    split = lm_spec(2)
    summaries = [build_shard(split, tmp_path / f"build-{k}", k, 2) for k in (1, 2)]
    assert [[c["name"] for c in s["candidates"]] for s in summaries] == [["int8"], ["int4-rtn"]]
    assert all(s["handoverBytes"] > 10 << 20 for s in summaries), summaries  # whole model folders, not records
    shards = tmp_path / "artifacts" / "ml" / "smollm2" / "generation-1" / "shards"
    for k, name in ((1, "int8"), (2, "int4-rtn")):
        record = json.loads((shards / f"shard-{k}" / name / "candidate.json").read_text())
        assert record["artifact"] == "model" and record["artifact_files"][0] == "model/model.onnx", record
        assert {"model/genai_config.json", "model/tokenizer.json"} <= set(record["files"]) and record["runnable"]

    result = benchmark_shards(split, tmp_path / "bench", 2, {}, bench_seconds=1)
    single = run(lm_spec(1), tmp_path / "single", bench_seconds=1)

    def table(wr):
        return {c.name: (c.perplexity, c.token_agreement, c.bits, c.size_bytes) for c in wr.candidates}
    assert table(result) == table(single), (table(result), table(single))
    assert result.baseline.perplexity == single.baseline.perplexity
    for c in result.candidates:
        assert c.decode_tokens_per_s and c.speedup is not None, c  # timed here, against this Job's baseline
        assert c.verdict in ("passed", "rejected") and c.artifact.startswith(str(tmp_path / "bench")), c
    if result.winner:  # what the benchmark Job publishes is the folder it read back
        assert (tmp_path / "bench" / "candidates" / result.winner / "model" / "model.onnx").is_file()
