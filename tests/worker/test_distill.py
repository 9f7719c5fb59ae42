"""Knowledge distillation (pass distill): spec checks (no heavy imports), the student's layer
choice, then one real run on the digits CNN: a half-width student distilled from the teacher beside
the same student trained on the labels alone (same initialisation, epochs and learning rate), and
the distilled student through INT8 in the same gate; and a stack of layers cut in the FX graph.
MiniLM distilled to 3 layers takes minutes on 2 cores: e2e/bench/distill_bench.py."""

from __future__ import annotations

import json

import pytest

from lathe.api.spec import parse_spec
from lathe.api.status import Verdict
from lathe.worker.passes import validate_candidates
from lathe.worker.passes.distill import keep_layers, layer_stack

TORCH_MODEL = {"uri": "m.pt", "format": "torchscript", "inputs": [{"name": "input", "shape": ["batch", 1, 8, 8]}]}
DISTILL = {"type": "distill", "width": 0.5}


def _spec(candidates, model=None, **data_sets):
    return parse_spec({"model": model or TORCH_MODEL,
                       "data": {"validation": {"uri": "v.npz"}, **{k: {"uri": v} for k, v in data_sets.items()}},
                       "candidates": candidates})


def test_distill_needs_training_data_named_by_field_path():
    assert validate_candidates(_spec([{"name": "s", "passes": [DISTILL]}], calibration="c.npz")) == [
        "spec.data.training: required by candidate 's' pass 0 (distill)"]
    then_int8 = [DISTILL, {"type": "quantize", "precision": "int8", "mode": "static"}]
    assert validate_candidates(_spec([{"name": "s", "passes": then_int8}], training="t.npz")) == []


def test_distill_refusals_name_their_fields():
    problems = validate_candidates(_spec([
        {"name": "a", "passes": [DISTILL]},
        {"name": "b", "passes": [{"type": "graph-optimize"}, DISTILL]},
        {"name": "c", "passes": [{"type": "distill", "width": 0.5, "layers": 3}]},
        {"name": "d", "passes": [{"type": "quantize", "width": 0.5}]},
        {"name": "e", "passes": [{"type": "distill", "distillation": {"alpha": 0, "featureLayers": ["features.0"]}}]},
    ], model={"uri": "m.onnx"}, training="t.npz"))
    text = "\n".join(problems)
    assert "spec.candidates[0].passes[0].type: distillation trains a student made from the PyTorch model" in text
    assert "spec.candidates[1].passes[1].type: distill builds the student from the PyTorch model and must be the first" in text
    assert "spec.candidates[2].passes[0].layers: give width (a narrower CNN) or layers" in text
    assert "spec.candidates[3].passes[0].width: not a setting of pass 'quantize'" in text
    assert "spec.candidates[4].passes[0].distillation.featureLayers: alpha 0 trains on the labels alone" in text
    with pytest.raises(ValueError, match=r"temperature"):  # range-checked by the schema
        _spec([{"name": "a", "passes": [{**DISTILL, "distillation": {"temperature": 0}}]}], training="t.npz")
    with pytest.raises(ValueError, match=r"loss"):
        _spec([{"name": "a", "passes": [{**DISTILL, "distillation": {"loss": "l1"}}]}], training="t.npz")


def test_student_layers_are_found_and_spread():
    shapes = {f"bert.encoder.layer.{i}.{p}": (8, 8) for i in range(6) for p in ("q.weight", "ln.weight")}
    shapes.update({"bert.embeddings.word.weight": (100, 8), "pool.0.weight": (8, 8), "pool.1.weight": (4, 8)})
    assert layer_stack(list(shapes), shapes) == ("bert.encoder.layer", 6)
    cnn = {"features.0.weight": (32, 1, 3, 3), "features.2.weight": (64, 32, 3, 3), "head.1.weight": (10, 64)}
    assert layer_stack(list(cnn), cnn) is None  # Conv layers of different shapes are not a stack
    assert keep_layers(6, 3) == [0, 3, 5] and keep_layers(12, 6) == [0, 2, 4, 7, 9, 11] and keep_layers(4, 2) == [0, 3]


@pytest.fixture(scope="module")
def distill_run(digits, make_spec, tmp_path_factory):
    from lathe.worker import pipeline

    # same student (the teacher's kept channels), epochs and learning rate; only the loss differs
    train = {"learningRate": 1e-3, "epochs": 8, "patience": 8}
    kd = {"type": "distill", "width": 0.5, "distillation": {**train, "temperature": 4, "alpha": 0.5}}
    labels = {"type": "distill", "width": 0.5, "distillation": {**train, "alpha": 0}}
    cands = [{"name": "kd", "passes": [kd]}, {"name": "labels", "passes": [labels]},
             {"name": "kd-int8", "passes": [kd, {"type": "quantize", "precision": "int8", "mode": "static"}]}]
    # one thread: training this small a model on 2 threads of a shared 2-core machine is 10x slower
    spec = make_spec(digits, training=True, candidates=cands, target={"batchSizes": [64], "threads": 1},
                     budget={"maxAccuracyDrop": 0.02, "minSpeedup": 0})
    events = []
    workdir = tmp_path_factory.mktemp("distill-run")
    result = pipeline.run(spec, workdir, lambda s, f, m: events.append((s, m)), bench_seconds=1, bench_rounds=2)
    details = json.loads((workdir / "details.json").read_text())
    return result, details, events


def _cand(result, name):
    return next(c for c in result.candidates if c.name == name)


def test_distilled_half_width_student_beats_labels_alone(distill_run):
    import onnx

    result, details, events = distill_run
    kd, labels = _cand(result, "kd"), _cand(result, "labels")
    for c in (kd, labels):
        assert c.verdict in (Verdict.passed, Verdict.rejected), (c.name, c.reason)
    dk, dl = details["candidates"]["kd"]["distillation"], details["candidates"]["labels"]["distillation"]
    assert dk["loss"] == "kl" and dk["hard_labels"] and dk["alpha"] == 0.5 and dl["alpha"] == 0
    assert dk["train_samples"] == 880 and dk["held_out_samples"] == 220  # of the training set, not validation
    assert [e["epoch"] for e in dk["epochs"]] == list(range(9)) == [e["epoch"] for e in dl["epochs"]]
    assert dk["epochs"][0]["held_out"] == dl["epochs"][0]["held_out"]  # the same student before training
    best = {n: d["epochs"][d["best_epoch"]]["held_out"] for n, d in (("kd", dk), ("labels", dl))}
    assert best["kd"] > best["labels"], best
    assert kd.accuracy >= labels.accuracy, (kd.accuracy, labels.accuracy)
    # half width: every prunable layer halved, initialised from the teacher's kept channels
    assert dk["kept"]["layers"] == ["features.0 32->16", "features.2 64->32", "features.6 64->32", "head.1 128->64"]
    assert dk["params_student"] < dk["params_teacher"] / 3
    convs = [i for i in onnx.load(kd.artifact).graph.initializer if len(i.dims) == 4]
    assert sorted(c.dims[0] for c in convs) == [16, 32, 32]
    logged = [m for s, m in events if s == "kd:distill" and m.startswith("epoch ")]
    assert len(logged) == 8 and "held-out top-1" in logged[0], logged


def test_distilled_student_goes_through_int8_and_the_gate(distill_run):
    result, details, _ = distill_run
    q = _cand(result, "kd-int8")
    assert q.verdict in (Verdict.passed, Verdict.rejected), q.reason
    assert q.precision.get("INT8", 0) >= 4, q.precision
    assert "distill(width 0.5) > quantize" in q.passes
    assert details["candidates"]["kd-int8"]["distillation"]["same_student_as"] == "kd"  # trained once


def test_shallower_student_is_the_teachers_kept_layers_in_sequence():
    """Cutting layers in the FX graph (what distill does to a transformer): the student computes
    exactly the teacher's kept blocks one after the other, with the teacher's weights."""
    import torch

    from lathe.worker.passes.distill import _drop_layers, _plain
    from lathe.worker.passes.qat import graph_module

    torch.manual_seed(0)

    class Block(torch.nn.Module):  # post-LN residual block, as BERT's layers
        def __init__(self):
            super().__init__()
            self.dense = torch.nn.Linear(8, 8)
            self.norm = torch.nn.LayerNorm(8)

        def forward(self, x, bias):
            return self.norm(x + torch.relu(self.dense(x) + bias))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(4, 8)
            self.layer = torch.nn.ModuleList([Block() for _ in range(4)])
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            bias = x.mean(1, keepdim=True)  # used by every layer, as an attention mask is
            h = self.embed(x)
            for blk in self.layer:
                h = blk(h, bias)
            return self.head(h)

    net = Net().eval()
    x = torch.randn(5, 4)
    names = [n for n, _ in net.named_parameters()]
    prefix, n = layer_stack(names, {k: tuple(v.shape) for k, v in net.named_parameters()})
    assert (prefix, n) == ("layer", 4)
    student = _plain(graph_module(net, (x,)))
    _drop_layers(student, prefix, n, keep_layers(4, 2))
    with torch.no_grad():
        bias = x.mean(1, keepdim=True)
        want = net.head(net.layer[3](net.layer[0](net.embed(x), bias), bias))
        assert torch.allclose(student(x), want, atol=1e-6)
        assert not torch.allclose(net(x), want, atol=1e-3)
    assert not any("layer.1." in str(nd.target) or "layer.2." in str(nd.target) for nd in student.graph.nodes)
