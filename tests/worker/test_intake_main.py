"""Model intake (ONNX, TorchScript, torch.export), bad input handling and the Job entrypoint."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lathe.worker.errors import InvalidInput
from lathe.worker.intake import intake
from lathe.worker.main import worker_main


def test_torchscript_export_has_dynamic_batch(digits, make_spec, tmp_path):
    spec = make_spec(digits)
    val = dict(np.load(digits["validation"]))
    info, module = intake(spec, tmp_path, val, digits["validation"])
    assert info.family == "conv" and module is not None
    sess = ort.InferenceSession(str(info.onnx_path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    x = val["input"][:5]  # neither the export's example batch (2) nor the check's (8, 1)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], ref, rtol=1e-4, atol=1e-4)


def test_torch_export_archive(digits, make_spec, tmp_path):
    module = torch.jit.load(str(digits["model"]))

    class Plain(torch.nn.Module):  # torch.export needs an nn.Module: rebuild from the scripted weights
        def __init__(self):
            super().__init__()
            from lathe.worker.samples import _digits_net

            self.net = _digits_net()
            self.net.load_state_dict(module.state_dict())
            self.net.eval()

        def forward(self, x):
            return self.net(x)

    x = torch.from_numpy(np.load(digits["validation"])["input"][:4])
    ep = torch.export.export(Plain().eval(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}})
    path = tmp_path / "digits.pt2"
    torch.export.save(ep, str(path))
    spec = make_spec(dict(digits, model=path, format="pytorch-export"))
    info, _ = intake(spec, tmp_path / "w", dict(np.load(digits["validation"])), digits["validation"])
    assert info.onnx_path.exists() and info.family == "conv"
    # the archive's dynamic batch survives into the ONNX graph: a symbolic first dimension, and other batch
    # sizes than the export's example (4) give the archive's own answers
    sess = ort.InferenceSession(str(info.onnx_path), providers=["CPUExecutionProvider"])
    dims = sess.get_inputs()[0].shape
    assert isinstance(dims[0], str) and dims[1:] == [1, 8, 8], dims
    program = torch.export.load(str(path)).module()
    val = np.load(digits["validation"])["input"]
    for n in (1, 7):
        with torch.no_grad():
            ref = program(torch.from_numpy(val[:n])).numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: val[:n]})[0]
        assert got.shape == ref.shape == (n, 10)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_corrupt_files_name_the_file(digits, make_spec, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x01garbage" * 10)
    with pytest.raises(InvalidInput, match=r"broken\.onnx: not a valid ONNX model"):
        intake(make_spec(dict(digits, model=bad, format="onnx", inputs=[])), tmp_path)
    badpt = tmp_path / "broken.pt"
    badpt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InvalidInput, match=r"broken\.pt: not a torchscript archive"):
        intake(make_spec(dict(digits, model=badpt)), tmp_path, dict(np.load(digits["validation"])))


def test_sha256_mismatch_is_bad_input(digits, make_spec, tmp_path):
    spec = make_spec(digits)
    spec.model.sha256 = "0" * 64
    with pytest.raises(InvalidInput, match="sha256 mismatch"):
        intake(spec, tmp_path, dict(np.load(digits["validation"])))


def _run_main(tmp_path, spec_obj, name="term.json"):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec_obj))
    term = tmp_path / name
    code = worker_main(["--spec", str(spec_file), "--workdir", str(tmp_path / "work"),
                        "--termination-log", str(term), "--bench-seconds", "1"])
    return code, json.loads(term.read_text())


def test_main_bad_spec_and_bad_input_exit_2(digits, tmp_path):
    from lathe.worker.samples import spec_for

    code, doc = _run_main(tmp_path, {"model": {"uri": "x.onnx"}})
    assert code == 2 and doc["kind"] == "InvalidInput" and doc["stage"] == "spec" and "data" in doc["error"]
    obj = spec_for(digits, candidates=[{"name": "x", "passes": [{"type": "quantize", "sparsity": 0.5}]}])
    code, doc = _run_main(tmp_path, obj)
    assert code == 2 and "spec.candidates[0].passes[0].sparsity: not a setting of pass 'quantize'" in doc["error"]
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((4, 1, 8, 8), np.float32))
    obj = spec_for(digits)
    obj["data"]["validation"]["uri"] = str(tmp_path / "wrong.npz")
    code, doc = _run_main(tmp_path, obj)
    assert code == 2 and doc["kind"] == "InvalidInput" and "'input'" in doc["error"] and "pixels" in doc["error"]


def test_main_impossible_budget_rejects_all_and_exits_0(digits, tmp_path):
    from lathe.worker.samples import spec_for

    obj = spec_for(digits, budget={"maxAccuracyDrop": 0.0, "minSpeedup": 50},
                   candidates=[{"name": "int8", "passes": [{"type": "quantize", "mode": "static"}]},
                               {"name": "opt", "passes": [{"type": "graph-optimize"}]}],
                   target={"batchSizes": [8]})
    code, doc = _run_main(tmp_path, obj)
    assert code == 0
    assert doc["winner"] is None
    assert [c["verdict"] for c in doc["candidates"]] == ["rejected", "rejected"]
    assert all("speedup" in c["reason"] and "< 50.00x required" in c["reason"] for c in doc["candidates"])
    assert (tmp_path / "work" / "report.html").exists()
