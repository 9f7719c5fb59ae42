"""Knowledge distillation (pass distill): spec checks (no heavy imports), the student's layer
choice, then one real run on the digits CNN: a half-width student distilled from the teacher beside
the same student trained on the labels alone (same initialisation and learning rate), what each
records and keeps, and the distilled student through INT8 in the same gate; and a stack of layers
cut in the FX graph. Which student is more accurate is a benchmark row, not a test:
e2e/bench/distill_bench.py (MiniLM distilled to 3 layers, and --digits for these two students)."""

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

    # same student (the teacher's kept channels), epochs and learning rate; the loss differs
    # the labels-only student stops by patience 2 (the guard's other path); the distilled one runs all 8 epochs
    train = {"learningRate": 1e-3, "epochs": 8}
    kd = {"type": "distill", "width": 0.5, "distillation": {**train, "patience": 8, "temperature": 4, "alpha": 0.5}}
    labels = {"type": "distill", "width": 0.5, "distillation": {**train, "patience": 2, "alpha": 0}}
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


def _on_held_out(artifact, teacher, training, held_out: float = 0.2) -> tuple[int, int, int, float]:
    """An exported student on the held-out share of the training set, split as the pass splits it (numpy's
    default_rng(0) permutation, the first 20%): (correct, samples, near ties, mean cosine to the teacher's
    outputs). Near ties: samples whose two best logits are within 1e-4, where ONNX Runtime and torch may pick
    different classes."""
    import numpy as np
    import onnxruntime as ort
    import torch

    with np.load(training) as z:
        x, y = z["input"], z["labels"]
    hold = np.random.default_rng(0).permutation(len(y))[: max(1, int(round(len(y) * held_out)))]
    sess = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x[hold].astype(np.float32)})[0].astype(np.float64)
    with torch.no_grad():
        ref = torch.jit.load(str(teacher))(torch.from_numpy(x[hold].astype(np.float32))).numpy().astype(np.float64)
    cos = float(np.mean(np.sum(logits * ref, 1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(ref, axis=1))))
    top2 = np.sort(logits, axis=1)[:, -2:]
    return int((logits.argmax(1) == y[hold]).sum()), len(hold), int((top2[:, 1] - top2[:, 0] < 1e-4).sum()), cos


def test_distillation_records_every_epoch_and_keeps_the_best(distill_run, digits):
    """What the pass promises, whatever the training outcome on this CPU: the teacher's term is in the loss
    (alpha 0.5, KL at T 4) and not in the labels-only student's, both start from the same student (epoch 0), every
    epoch is scored on the held-out share of the training set (never validation) and recorded, training stops by
    the patience rule, and the student exported is the best epoch's (its held-out top-1 is that epoch's figure).
    Which student ends more accurate is a training outcome on a few hundred images, not a property of the code:
    e2e/bench/distill_bench.py --digits compares them (e2e/bench/distill_results.md)."""
    import onnx

    result, details, events = distill_run
    kd, labels = _cand(result, "kd"), _cand(result, "labels")
    for c in (kd, labels):
        assert c.verdict in (Verdict.passed, Verdict.rejected), (c.name, c.reason)
    dk, dl = details["candidates"]["kd"]["distillation"], details["candidates"]["labels"]["distillation"]
    assert dk["loss"] == "kl" and dk["temperature"] == 4 and dk["hard_labels"] and dk["alpha"] == 0.5
    assert dl["alpha"] == 0 and dl["hard_labels"]
    assert dk["train_samples"] == 880 and dk["held_out_samples"] == 220  # of the training set, not validation
    assert dk["epochs"][0]["held_out"] == dl["epochs"][0]["held_out"]  # the same student before training
    assert dk["epochs"][0]["loss"] is None and dk["teacher_held_out"] > 0.9
    # the losses differ from the first epoch on: KL to the teacher's softened outputs is in one, not the other
    assert dk["epochs"][1]["loss"] != dl["epochs"][1]["loss"], (dk["epochs"][1], dl["epochs"][1])
    for name, d, patience in (("kd", dk, 8), ("labels", dl, 2)):
        figs = [e["held_out"] for e in d["epochs"]]
        assert [e["epoch"] for e in d["epochs"]] == list(range(len(figs))) and 2 <= len(figs) <= 9, (name, d["epochs"])
        assert all(0 <= f <= 1 for f in figs) and all(e["seconds"] >= 0 for e in d["epochs"][1:])
        best = d["best_epoch"]
        assert figs[best] == max(figs) and best == figs.index(max(figs)), (name, figs, best)  # the first best kept
        # patience: it stops after `patience` epochs without a better figure, and not before
        since = len(figs) - 1 - best
        if d["stopped"]:
            assert since == patience and f"kept epoch {best}" in d["stopped"], (name, d["stopped"], figs)
        else:
            assert len(figs) == 9 and since < patience, (name, figs)
        # the exported student is the best epoch's: its held-out top-1 and its cosine to the teacher are that
        # epoch's (the cosine tells apart epochs of equal top-1: no two epochs here share it)
        cosines = [e["teacher_cosine"] for e in d["epochs"]]
        assert len(set(cosines)) == len(cosines), (name, cosines)
        correct, n, near, cos = _on_held_out(_cand(result, name).artifact, digits["model"], digits["training"])
        assert n == d["held_out_samples"] and abs(correct - round(figs[best] * n)) <= near, (name, correct, figs, near)
        assert abs(cos - cosines[best]) < 1e-4 < min(abs(cos - c) for k, c in enumerate(cosines) if k != best), (
            name, cos, cosines, best)
    logged = [m for s, m in events if s == "kd:distill" and m.startswith("epoch ")]
    assert len(logged) == len(dk["epochs"]) - 1 and "held-out top-1" in logged[0], logged
    # half width: every prunable layer halved, initialised from the teacher's kept channels
    assert dk["kept"]["layers"] == ["features.0 32->16", "features.2 64->32", "features.6 64->32", "head.1 128->64"]
    assert dk["params_student"] < dk["params_teacher"] / 3
    convs = [i for i in onnx.load(kd.artifact).graph.initializer if len(i.dims) == 4]
    assert sorted(c.dims[0] for c in convs) == [16, 32, 32]


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
