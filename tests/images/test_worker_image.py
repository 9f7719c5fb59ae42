"""The worker image runs a real `lathe worker`, as the operator's Job runs it (read-only root, uid
65532, no capabilities, and no network at all): the digits CNN trained here as TorchScript goes through
intake (torch exports it to ONNX), ONNX Runtime static INT8, structured pruning with fine-tuning (torch
training), NNCF INT8 on OpenVINO, validation, benchmark and selection, and the winner is published to a
Triton model repository (its config.pbtxt checked against tritonclient's ModelConfig)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lathe.worker.samples import make_digits, spec_for

CANDIDATES = [
    {"name": "int8-static", "runtime": "onnxruntime",
     "passes": [{"type": "quantize", "precision": "int8", "mode": "static"}]},
    {"name": "pruned", "runtime": "onnxruntime",
     "passes": [{"type": "prune", "method": "structured", "sparsity": 0.25, "fineTune": {"epochs": 1}}]},
    {"name": "ov-int8", "runtime": "openvino", "passes": [{"type": "quantize", "precision": "int8"}]},
]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits-image")
    sample = make_digits(d)
    d.chmod(0o755)
    return d, sample


def _inside(sample: dict, data: str) -> dict:
    return {**sample, **{k: f"{data}/{Path(sample[k]).name}" for k in ("model", "calibration", "validation")}}


def test_worker_image_runs_a_real_job(docker, images, digits, tmp_path):
    host_data, sample = digits
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the worker writes as 65532
    spec = spec_for(_inside(sample, "/data"), candidates=CANDIDATES, target={"batchSizes": [8], "threads": 2},
                    budget={"maxAccuracyDrop": 0.02, "minSpeedup": 0},  # the chain, not speed: 8x8 digits
                    publish={"repository": "/out/repo", "modelName": "digits"})
    p = docker.run(images["worker"], "worker", "--workdir", "/out/work", "--termination-log", "/out/result.json",
                   "--bench-seconds", "2", network="none", timeout=1200,
                   flags=("-v", f"{host_data}:/data:ro", "-v", f"{out}:/out", "-e", f"LATHE_SPEC={json.dumps(spec)}"))
    log = p.stderr[-6000:]
    assert p.returncode == 0, f"lathe worker exited {p.returncode}:\n{log}"
    result = json.loads((out / "result.json").read_text())
    cands = {c["name"]: c for c in result["candidates"]}
    assert set(cands) == {c["name"] for c in CANDIDATES}, (result, log)
    for name, c in cands.items():
        assert c["verdict"] != "failed", (name, c, log)
        assert c["p50Ms"] > 0 and 0.9 < c["accuracy"] <= 1.0, (name, c)
    assert cands["ov-int8"]["runtime"] == "openvino"
    assert result["baseline"]["accuracy"] > 0.95
    assert result["winner"] in cands, (result, log)
    published = result["published"]
    assert published and published["modelName"] == "digits", result
    config = out / "repo" / "digits" / "config.pbtxt"
    assert config.is_file() and 'name: "digits"' in config.read_text(), sorted(p.name for p in out.rglob("*"))
    assert (out / "work" / "candidates" / "int8-static" / "model.onnx").is_file()


def test_worker_image_carries_the_causal_lm_stack(docker, images):
    """Task causal-lm's worker half (docs/llm.md) imports in the image, offline: the generation runtime, its model
    builder (which imports transformers and torch), GGUF reading and the weight-only pass's packer."""
    code = ("import onnxruntime_genai, gguf, accelerate, tokenizers, transformers; "
            "import onnxruntime_genai.models.builder as b; "
            "from onnxruntime.quantization.neural_compressor.weight_only import make_matmul_weight_only_node; "
            "from lathe.worker.llm import pipeline, quantize, gptq; "
            "from lathe.worker.llm.export import supported_architectures; "
            "assert 'LlamaForCausalLM' in supported_architectures(); print(onnxruntime_genai.__version__)")
    p = docker.run(images["worker"], "-c", code, entrypoint="/opt/lathe/bin/python", network="none", timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "0.18.0"
