"""The worker side of one engine per GPU architecture (spec.target.gpu.architectures): a build Job with
LATHE_GPU_ARCH set never publishes; it keeps every passed tensorrt candidate's engine and graph under
spec.artifacts for the operator's publish Job (serving/architectures.py, tests/architectures for the rest).
No engine can be built here (no TensorRT, no GPU): the keeping is shown on placeholder files, and the run
through `lathe worker` shows the candidates judged on the CPU, nothing published and nothing kept."""

from __future__ import annotations

import json

import pytest

from lathe.api.spec import parse_spec
from lathe.api.status import CandidateResult, Verdict, WorkerResult
from lathe.worker.errors import InvalidInput
from lathe.worker.main import worker_main
from lathe.worker.publish_step import check_architecture, keep_architecture_engines
from lathe.worker.samples import spec_for

ARCHS = {"device": "gpu", "runtimes": ["tensorrt"],
         "gpu": {"architectures": [{"computeCapability": "8.9"}, {"computeCapability": "9.0"}]}}


def _spec(digits, tmp_path, **extra):
    return spec_for(digits, target=ARCHS, artifacts=str(tmp_path / "artifacts"),
                    publish={"repository": str(tmp_path / "repo"), "modelName": "digits"}, **extra)


def test_a_build_job_keeps_each_passed_engine_and_its_graph(digits, tmp_path, monkeypatch):
    """Placeholder engine files: what is under test is where they go and that only passed tensorrt ones do."""
    monkeypatch.setenv("LATHE_RESOURCE", "team/digits")
    monkeypatch.setenv("LATHE_GENERATION", "3")
    spec = parse_spec(_spec(digits, tmp_path))
    cands = []
    for name, verdict, runtime in [("trt-int8", Verdict.passed, "tensorrt"), ("trt-fp8", Verdict.rejected, "tensorrt"),
                                   ("trt-fp16", Verdict.passed, "tensorrt"), ("ort", Verdict.passed, "onnxruntime")]:
        d = tmp_path / "work" / name
        d.mkdir(parents=True)
        (d / "model.plan").write_bytes(f"engine of {name}".encode())
        (d / "graph.onnx").write_bytes(f"graph of {name}".encode())
        cands.append(CandidateResult(name=name, runtime=runtime, verdict=verdict, artifact=str(d / "model.plan")))
    result = WorkerResult(metric="top1", baseline=CandidateResult(name="baseline"), candidates=cands)
    kept = keep_architecture_engines(spec, result, "8.9")
    root = tmp_path / "artifacts" / "team" / "digits" / "generation-3" / "sm89"
    assert sorted(kept) == [root / "trt-fp16", root / "trt-int8"]
    assert (root / "trt-int8" / "model.plan").read_bytes() == b"engine of trt-int8"
    assert (root / "trt-int8" / "source.onnx").read_bytes() == b"graph of trt-int8"
    assert not (root / "trt-fp8").exists() and not (root / "ort").exists()


def test_a_gpu_of_another_architecture_is_bad_input():
    check_architecture("8.9", "8.9")
    check_architecture("8.9", None)  # no GPU visible: the engine build says so itself
    with pytest.raises(InvalidInput, match="builds for compute capability 8.9 .* but its GPU is 9.0"):
        check_architecture("8.9", "9.0")


def test_lathe_worker_with_an_architecture_never_publishes(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("LATHE_GPU_ARCH", "8.9")
    monkeypatch.setenv("LATHE_RESOURCE", "team/digits")
    obj = _spec(digits, tmp_path, candidates=[{"name": "trt-fp16", "runtime": "tensorrt",
                                               "passes": [{"type": "quantize", "precision": "fp16"}]}])
    (tmp_path / "spec.json").write_text(json.dumps(obj))
    code = worker_main(["--spec", str(tmp_path / "spec.json"), "--workdir", str(tmp_path / "work"),
                        "--termination-log", str(tmp_path / "term.json"), "--bench-seconds", "0.5"])
    doc = json.loads((tmp_path / "term.json").read_text())
    assert code == 0, doc
    fp16 = next(c for c in doc["candidates"] if c["name"] == "trt-fp16")
    assert fp16["verdict"] == "failed" and "engine not built" in fp16["reason"], fp16  # judged on the CPU
    assert not (tmp_path / "repo").exists() and doc.get("published") is None
    assert not (tmp_path / "artifacts" / "team" / "digits" / "generation-1" / "sm89").exists()
