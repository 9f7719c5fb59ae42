"""Bad data and bad declarations said as what they are: class labels the model cannot produce, and input
names the model does not have (the real digits CNN, TorchScript and its ONNX export)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lathe.worker.data import Dataset, check_labels
from lathe.worker.errors import InvalidInput
from lathe.worker.intake import intake
from lathe.worker.main import worker_main
from lathe.worker.samples import spec_for


def test_check_labels_names_the_file_the_label_and_the_class_count(tmp_path):
    feeds = {"input": np.zeros((5, 1, 8, 8), np.float32)}
    ok = Dataset(tmp_path / "v.npz", feeds, np.array([0, 9, 3, 3, 1]))
    check_labels(ok, 10)
    for labels, want in ((np.array([0, 1, 10, 12, 10]), "label 10 is outside the model's 10 classes (0..9): 3 of 5"),
                         (np.array([0, -1, 2, 3, 4]), "label -1 is outside"),
                         (np.array([0.0, 1.0, 2.5, 3.0, 4.0]), "label 2.5 is not a class index")):
        with pytest.raises(InvalidInput, match=r"validation data .*v\.npz: " + want.replace("(", r"\(")
                           .replace(")", r"\)").replace(".", r"\.")) as e:
            check_labels(Dataset(tmp_path / "v.npz", feeds, labels), 10)
        assert e.value.stage == "data"
    check_labels(Dataset(tmp_path / "r.npz", feeds, np.zeros((5, 3))), 10)  # regression targets: not classes


def _run(tmp_path, obj) -> tuple[int, dict]:
    (tmp_path / "spec.json").write_text(json.dumps(obj))
    term = tmp_path / "term.json"
    code = worker_main(["--spec", str(tmp_path / "spec.json"), "--workdir", str(tmp_path / "work"),
                        "--termination-log", str(term), "--bench-seconds", "1"])
    return code, json.loads(term.read_text())


@pytest.mark.parametrize("role", ["validation", "calibration"])
def test_worker_refuses_labels_outside_the_models_outputs(digits, tmp_path, role):
    arrays = dict(np.load(digits[role]))
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][[3, 7]] = 10  # the CNN has 10 outputs (0..9): a label file for 11 classes, say
    bad = tmp_path / f"{role}-11.npz"
    np.savez(bad, **arrays)
    obj = spec_for(digits, candidates=[{"name": "opt", "passes": [{"type": "graph-optimize"}]}])
    obj["data"][role]["uri"] = str(bad)
    code, doc = _run(tmp_path, obj)
    assert code == 2 and doc["kind"] == "InvalidInput" and doc["stage"] == "data", doc
    assert doc["error"] == (f"{role} data {bad}: label 10 is outside the model's 10 classes (0..9): 2 of "
                            f"{len(arrays['labels'])} samples have labels the model cannot produce (10); is the label "
                            "file for this model, and are the classes counted from 0?")
    assert not (tmp_path / "work" / "candidates").exists()  # refused at the baseline, before any candidate


def test_onnx_declared_input_the_model_lacks_is_said_so(digits, make_spec, tmp_path):
    info, _ = intake(make_spec(digits), tmp_path / "export", dict(np.load(digits["validation"])), digits["validation"])
    onnx_model = Path(info.onnx_path)  # the digits CNN as ONNX: one input, 'input'
    spec = make_spec(dict(digits, model=onnx_model, format="onnx",
                          inputs=[{"name": "pixels", "shape": ["batch", 1, 8, 8]}]))
    with pytest.raises(InvalidInput) as e:
        intake(spec, tmp_path, dict(np.load(digits["validation"])))
    assert e.value.stage == "intake"
    assert e.value.message == (f"model file {onnx_model}: the model has no input named 'pixels' (spec.model.inputs); "
                               "spec.model.inputs does not declare its input 'input'; the model's inputs are "
                               "['input']")


def test_torch_declared_inputs_the_model_lacks_are_said_so_before_the_data(digits, make_spec, tmp_path):
    val = dict(np.load(digits["validation"]))
    two = make_spec(dict(digits, inputs=[{"name": "input", "shape": ["batch", 1, 8, 8]},
                                         {"name": "mask", "shape": ["batch", 8]}]))
    with pytest.raises(InvalidInput) as e:
        intake(two, tmp_path, val, digits["validation"])
    assert e.value.stage == "intake" and "the model takes 1: it has no input for 'mask'" in e.value.message
    assert "the model's inputs are ['x'] (its forward's arguments, taken in order)" in e.value.message
    renamed = make_spec(dict(digits, inputs=[{"name": "pixels", "shape": ["batch", 1, 8, 8]}]))
    with pytest.raises(InvalidInput) as e:
        intake(renamed, tmp_path, val, digits["validation"])
    assert e.value.stage == "intake" and "the model has no input named 'pixels' (spec.model.inputs)" in e.value.message
    assert "arrays: ['input', 'labels']" in e.value.message and "['x']" in e.value.message


def test_worker_refuses_a_batch_whose_inputs_exceed_its_memory_limit_when_only_the_data_tells(
        digits, make_spec, tmp_path, monkeypatch):
    """An ONNX model with no declared inputs: the operator cannot size a sample, the worker can once the data
    is read, and refuses before any candidate or benchmark instead of being killed for memory."""
    from lathe.api.spec import parse_spec
    from lathe.controller.validate import problems

    info, _ = intake(make_spec(digits), tmp_path / "export", dict(np.load(digits["validation"])), digits["validation"])
    obj = spec_for(dict(digits, model=Path(info.onnx_path), format="onnx", inputs=[]), target={"batchSizes": [1, 8192]},
                   candidates=[{"name": "opt", "passes": [{"type": "graph-optimize"}]}])
    assert problems(parse_spec(obj), memory_limit="1Mi") == []  # 8x8 float32 = 256 bytes a sample: unknown there
    monkeypatch.setenv("LATHE_MEMORY_LIMIT", "1Mi")
    code, doc = _run(tmp_path, obj)
    assert code == 2 and doc["kind"] == "InvalidInput" and doc["stage"] == "data", doc
    assert doc["error"] == ("spec.target.batchSizes: batch size 8192 needs 2.0 MiB for its inputs alone (256 bytes a "
                            "sample, validation data: input [1, 8, 8] float32), more than the worker's memory limit "
                            "1Mi (1.0 MiB): inputs alone fit below 4096 samples a batch, and running the model needs "
                            "more; lower spec.target.batchSizes or raise spec.target.resources.limits.memory")
    assert not (tmp_path / "work" / "candidates").exists()
