"""Spec validation of passes (no heavy imports), defaults, storage, data checks, budget and selection."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from lathe.api.spec import parse_spec
from lathe.api.status import CandidateResult, WorkerResult
from lathe.storage import StorageError, resolve
from lathe.worker import data
from lathe.worker.errors import CoverageError, InvalidInput
from lathe.worker.passes import default_candidates, validate_candidates


def _spec(candidates=None, fmt="onnx", calibration=None, **kw):
    sets = {"validation": {"uri": "v.npz"}, **({"calibration": {"uri": calibration}} if calibration else {})}
    return parse_spec({"model": {"uri": "m.onnx", "format": fmt}, "data": sets,
                       "candidates": candidates or [], **kw})


def test_passes_import_without_heavy_modules():
    code = ("import sys, lathe.worker.passes, lathe.worker.errors, lathe.evaluate.select;"
            "print([m for m in ('torch','onnxruntime','openvino','onnx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_validate_candidates_names_field_paths():
    spec = _spec([
        {"name": "a", "passes": [{"type": "quantize", "precision": "int8", "mode": "dynamic"},
                                 {"type": "graph-optimize", "level": "all"}, {"type": "foo"}]},
        {"name": "b", "passes": [{"type": "quantize", "sparsity": 0.5}]},
        {"name": "c", "passes": [{"type": "quantize", "precision": "int8", "mode": "qat"}]},
        {"name": "d", "passes": [{"type": "prune", "method": "2:4"}]},
        {"name": "e", "passes": [{"type": "prune", "method": "structured", "sparsity": 0.3}]},
        {"name": "f", "passes": [{"type": "quantize", "precision": "fp16", "blockSize": 32}]},
    ])
    problems = validate_candidates(spec)
    text = "\n".join(problems)
    unknown = next(p for p in problems if p.startswith("spec.candidates[0].passes[2].type: unknown pass 'foo' (known: "))
    assert all(name in unknown for name in ("graph-optimize", "prune", "quantize"))
    assert "spec.candidates[1].passes[0].sparsity: not a setting of pass 'quantize'" in problems
    assert "spec.candidates[2].passes[0].mode: qat trains the PyTorch model: it needs model.format torchscript" in text
    assert "spec.data.training: required by candidate 'c' pass 0 (quantize mode qat)" in problems
    assert "spec.candidates[3].passes[0].method: 2:4 structured sparsity needs a GPU runtime" in text
    assert "spec.candidates[4].passes[0].method: structured pruning needs a PyTorch source" in text
    assert "spec.candidates[5].passes[0].blockSize: only used by precision int4" in text
    assert not any(p.startswith("spec.candidates[0].passes[0]") for p in problems)


def test_valid_candidates_have_no_problems():
    spec = _spec([{"name": "q", "passes": [{"type": "quantize", "precision": "int8", "mode": "static",
                                            "calibration": {"method": "entropy"}, "perChannel": True}]},
                  {"name": "p", "passes": [{"type": "prune", "method": "structured", "sparsity": 0.25,
                                            "fineTune": {"epochs": 2}}, {"type": "quantize"}]}],
                 fmt="torchscript", calibration="c.npz")  # fine-tuning needs data other than validation
    assert validate_candidates(spec) == []


def test_default_candidates_follow_the_model():
    tr = default_candidates(_spec(), family="transformer", runtime="onnxruntime")
    names = [c.name for c in tr]
    assert {"int8-dynamic", "int8-static", "int4-weights", "ort-optimized"} <= set(names)
    conv = default_candidates(_spec(fmt="torchscript"), family="conv", runtime="onnxruntime")
    assert "pruned-25" in [c.name for c in conv]
    assert "int8-dynamic" not in [c.name for c in conv]  # ConvInteger is the slowest choice on CPU
    assert validate_candidates(_spec([c.model_dump(by_alias=True, exclude_none=True) for c in conv],
                                     fmt="torchscript")) == []


def test_storage_local_sha_pvc_https_s3(tmp_path, monkeypatch):
    f = tmp_path / "x.bin"
    f.write_bytes(b"hello")
    good = hashlib.sha256(b"hello").hexdigest()
    assert resolve(str(f), good) == f
    with pytest.raises(StorageError, match="sha256 mismatch"):
        resolve(str(f), "0" * 64)
    monkeypatch.setenv("LATHE_PVC_ROOT", str(tmp_path))
    (tmp_path / "claim" / "dir").mkdir(parents=True)
    (tmp_path / "claim" / "dir" / "m.onnx").write_bytes(b"m")
    assert resolve("pvc://claim/dir/m.onnx") == tmp_path / "claim" / "dir" / "m.onnx"
    with pytest.raises(StorageError, match="needs a sha256"):
        resolve("https://example.com/m.onnx")
    with pytest.raises(StorageError, match="no such file"):
        resolve(str(tmp_path / "missing.onnx"))
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(StorageError, match="no S3 credentials .* spec.storage.s3.secretRef"):
        resolve("s3://bucket/key")  # nothing is asked of any store without credentials
    with pytest.raises(StorageError, match="an object, not a prefix"):
        resolve("s3://bucket/prefix/")


IMG = [data.InputMeta("input", ["batch", 1, 8, 8], "float32")]


def _npz(tmp_path, name="v.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def test_data_errors_name_the_array(tmp_path):
    x = np.random.rand(20, 1, 8, 8).astype(np.float32)
    with pytest.raises(InvalidInput, match=r"no array for model input\(s\) \['input'\].*'pixels'"):
        data.load(_npz(tmp_path, pixels=x), IMG)
    with pytest.raises(InvalidInput, match=r"array 'input' has shape \[20, 1, 4, 16\]"):
        data.load(_npz(tmp_path, input=x.reshape(20, 1, 4, 16)), IMG)
    with pytest.raises(InvalidInput, match=r"array 'input' has dtype int64"):
        data.load(_npz(tmp_path, input=x.astype(np.int64)), IMG)
    bad = x.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(InvalidInput, match=r"array 'input' contains 1 NaN"):
        data.load(_npz(tmp_path, input=bad), IMG)
    with pytest.raises(InvalidInput, match=r"array\(s\) \['extra'\] are not model inputs"):
        data.load(_npz(tmp_path, input=x, extra=x), IMG)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match="junk.npz: not a readable .npz"):
        data.load(junk, IMG)
    ds = data.load(_npz(tmp_path, input=x.astype(np.float64), labels=np.arange(20) % 3), IMG, max_samples=7)
    assert len(ds) == 7 and ds.feeds["input"].dtype == np.float32


def test_coverage_checks(tmp_path):
    cov = parse_spec({"model": {"uri": "m"}, "data": {"validation": {"uri": "v"},
                                                       "coverage": {"minSamples": 10, "warnSamples": 50}}}).data.coverage
    rng = np.random.default_rng(0)
    val = data.Dataset(tmp_path, {"input": rng.random((60, 1, 8, 8), dtype=np.float32)}, np.arange(60) % 10)
    cal = data.Dataset(tmp_path, {"input": rng.random((30, 1, 8, 8), dtype=np.float32) * 0.5},
                       np.array([c for c in range(10) if c != 7] * 3 + [0, 1, 2])[:30])
    rep = data.coverage(cal, val, cov)
    assert rep.missing_classes == [7]
    with pytest.raises(CoverageError, match=r"misses class\(es\) \[7\]") as e:
        rep.raise_for_errors()
    assert e.value.missing_classes == [7]
    assert any("only 30 samples" in w for w in rep.warnings)
    assert rep.out_of_range is not None and rep.out_of_range > 0.4  # calibrated on [0, .5), validation [0, 1)
    assert any("outside the calibrated range" in m for m in rep.errors)
    few = data.coverage(cal.take(slice(0, 5)), val, cov)
    assert any("fewer than coverage.minSamples=10" in m for m in few.errors)


def test_compact_fits_with_long_paths_keeping_the_whole_table_first():
    # a worker under a deep folder: long artifact paths and report copies (what the node agent's pods have)
    deep = "/tmp/pytest-of-root/pytest-99/test_split_search_matches_the_0/target-1/pods/" + "p" * 60
    cands = [CandidateResult(name=n, reason="r" * 200, accuracy=0.98, accuracy_drop=0.0, p50_ms=0.1, speedup=1.1,
                             artifact=f"{deep}/volumes/work/candidates/{n}/model.onnx", sha256="f" * 64)
             for n in ("ort-optimized", "int8-static", "pruned-25", "pruned-25-int8", "ov-fp32", "ov-int8")]
    wr = WorkerResult(metric="top1", baseline=CandidateResult(name="baseline", artifact=f"{deep}/baseline/model.onnx"),
                      candidates=cands, winner="pruned-25", report=f"{deep}/volumes/work/result.json",
                      copies=[f"{deep}/artifacts/bench/digits/generation-1/{n}" for n in ("a.json", "b.json", "c.html")]
                      + [f"{deep}/repo/digits/1/report.{x}" for x in ("json", "html")])
    doc = json.loads(wr.compact())
    assert [c["name"] for c in doc["candidates"]] == [c.name for c in cands] and doc["truncated"] is False
    assert [("artifact" in c) for c in doc["candidates"]] == [False, False, True, False, False, False]  # the winner's
    assert len(doc["copies"]) == 5


def test_compact_fits_termination_message():
    long = "x" * 2000
    cands = [CandidateResult(name=f"candidate-{i:02d}", reason=long, accuracy=0.9, p50_ms=1.0, artifact="/w/" + "a" * 80,
                             sha256="f" * 64, warnings=[long]) for i in range(40)]
    wr = WorkerResult(metric="top1", baseline=CandidateResult(name="baseline"), candidates=cands, winner="candidate-33")
    text = wr.compact()
    assert len(text.encode()) < 4096
    doc = json.loads(text)
    assert doc["winner"] == "candidate-33" and doc["truncated"] is True
    assert doc["candidates"][0]["name"] == "candidate-33"
