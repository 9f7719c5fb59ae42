"""The whole causal-LM chain: `lathe run --example llm --quick` (SmolLM2-135M, INT8 and INT4 candidates, the
table, result.json, the HTML report and the genai version published), and a built model ONNX Runtime refuses reported as failed, never a
crash (the model builder's asymmetric INT4 of this tied-embedding model, as measured for issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lathe.api.status import Verdict


@pytest.fixture(scope="module")
def quick_run(smollm2, tmp_path_factory):
    import contextlib
    import io

    from lathe.local_run import run_local

    out = tmp_path_factory.mktemp("llm-run")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run_local(None, out, quick=True, example="llm")
    return rc, buf.getvalue(), out


def test_the_example_runs_the_whole_chain(quick_run):
    rc, printed, out = quick_run
    assert rc == 0, printed[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["metric"] == "perplexity"
    base = result["baseline"]
    assert base["perplexity"] > 1 and base["tokenAgreement"] == 1.0
    assert set(base["firstTokenMs"]) == {"32", "128"} and base["decodeTokensPerS"] > 0
    cands = {c["name"]: c for c in result["candidates"]}
    assert set(cands) == {"int8", "int4-rtn"}
    for c in cands.values():
        assert c["verdict"] in ("passed", "rejected"), c["reason"]  # built, loaded, generated, judged
        # the verdict follows the figures and the default budget (+2% perplexity, agreement 0.95, faster)
        inside = (c["perplexityIncrease"] <= 0.02 and c["tokenAgreement"] >= 0.95 and c["speedupLow"] > 1.0)
        assert (c["verdict"] == "passed") == inside, c
        assert c["bits"] == ({"8": 151} if c["name"] == "int8" else {"4": 151})
        assert Path(c["artifact"], "model.onnx").is_file() and Path(c["artifact"], "genai_config.json").is_file()
    # INT4 round to nearest on a model already on a Q4_1 grid loses more than INT8 (issue 22: +31% vs +0.5%)
    assert cands["int4-rtn"]["perplexityIncrease"] > cands["int8"]["perplexityIncrease"]
    assert cands["int4-rtn"]["sizeBytes"] < cands["int8"]["sizeBytes"] < base["sizeBytes"]
    for words in ("perplexity", "change", "agreement", "TTFT@32 ms", "decode tok/s [95%]", "2 streams tok/s"):
        assert words in printed
    html = (out / "report.html").read_text()
    assert "Perplexity vs decode speed" in html and 'class="bits"' in html and "perplexity budget (+2.0%)" in html
    details = json.loads((out / "details.json").read_text())
    assert details["export_verification"]["max_relative_logit_difference"] < 1e-3
    assert details["candidates"]["int8"]["generated"]  # every candidate generated before it was judged
    # the winner, if any, is published with the genai flavour: its folder plus the streaming model.py
    repo = out / "triton-repository" / "smollm2"
    if result["winner"] is None:
        assert result.get("published") is None and not repo.exists()
    else:
        assert result["published"]["flavour"] == "genai" and result["published"]["version"] == 1
        version = repo / "1"
        assert {"model.onnx", "genai_config.json", "tokenizer.json", "model.py"} <= {f.name for f in version.iterdir()}
        config = (repo / "config.pbtxt").read_text()
        assert 'backend: "python"' in config and "decoupled: true" in config


def test_a_model_onnx_runtime_refuses_is_a_failed_candidate(smollm2, tmp_path):
    from lathe.api.spec import parse_spec
    from lathe.api.status import CandidateResult
    from lathe.worker.llm import export
    from lathe.worker.llm.example import example_spec
    from lathe.worker.llm.pipeline import LlmPipeline

    # the builder's INT4 with is_symmetric=false: uint4 weights on the embedding it shares with lm_head
    broken, _ = export.build(smollm2.checkpoint.folder, smollm2.checkpoint.fingerprint, "int4",
                             {"is_symmetric": "false"})
    doc = example_spec(tmp_path / "in", validation_windows=1, calibration_windows=1)
    doc["task"]["windowTokens"] = 32
    p = LlmPipeline(parse_spec(doc), tmp_path / "work")
    p.load()
    p.baseline()
    b = p.judge(broken, CandidateResult(name="builder-int4-asym", runtime="onnxruntime-genai"))
    assert b.result.verdict == Verdict.failed
    assert b.result.reason.startswith(("load: onnxruntime-genai cannot load", "run: ")), b.result.reason
    assert b.runner is None and b.result.perplexity is None


def test_the_worker_job_reports_bad_input_in_its_termination_message(smollm2, tmp_path):
    """`lathe worker` (what the Job runs) on a checkpoint folder without tokenizer.json: exit 2, kind
    InvalidInput at stage intake, the reason in the termination message the operator turns into status."""
    from lathe.worker.main import worker_main

    folder = tmp_path / "ck"
    folder.mkdir()
    for f in ("config.json", "model.safetensors"):
        (folder / f).symlink_to(smollm2.checkpoint.folder / f)
    (tmp_path / "val.txt").write_text("some text " * 200)
    spec = {"model": {"uri": str(folder), "format": "hf"}, "task": {"type": "causal-lm"},
            "data": {"validation": {"uri": str(tmp_path / "val.txt")}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    term = tmp_path / "termination-log"
    rc = worker_main(["--spec", str(tmp_path / "spec.json"), "--workdir", str(tmp_path / "work"),
                      "--termination-log", str(term)])
    doc = json.loads(term.read_text())
    assert rc == 2 and doc["kind"] == "InvalidInput" and doc["stage"] == "intake"
    assert "no tokenizer.json" in doc["error"]
