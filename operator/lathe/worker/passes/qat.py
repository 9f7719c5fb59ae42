"""Quantization-aware training (quantize mode qat) for PyTorch sources, with the forgetting guard.

Route: the PyTorch module becomes an FX graph (torch.export's program for pytorch-export sources,
`TS2EPConverter` for TorchScript), BatchNorms are folded into the convolutions before them (as the
ONNX export folds them), and fake quantization is inserted exactly where ONNX Runtime's static QDQ
quantizer will quantize: every Conv/Linear weight (per output channel or per tensor, symmetric s8,
7-bit on x86 CPUs without VNNI: `Quantize.reduce_range`) and every Conv/Linear input plus the graph
outputs they produce (u8 asymmetric, MinMax). The weight grid is recomputed from the weight at
every step (ONNX Runtime quantizes the weight it is given with its own absmax); activation ranges
are MinMax over the calibration set, re-measured before every epoch and every held-out score,
which is what ONNX Runtime's calibrator will measure on the exported model. Gradients pass the
rounding straight through (`torch.fake_quantize_*`: the STE, zero outside the range).

After training the fake quantizers come out, the best epoch's float weights are exported to ONNX,
and the quantize pass quantizes that model statically with the same settings (same calibrator,
same QDQ layout, activation coverage and mixed-precision fallback as every static candidate). So
the artifact is an ordinary INT8 Q/DQ model for ONNX Runtime whose weights were trained through
the quantizer that produced it. PyTorch's PT2E QAT flow (`prepare_qat_pt2e` with the x86
quantizer) is not used: it moved to torchao, which is not a dependency here, and its x86 quantizer
targets PyTorch's own int8 kernels rather than ONNX Runtime's QDQ layout.

Forgetting guard: Adam at a low learning rate (1e-5), few epochs (3), each epoch scored on a
held-out share of the training data (never the validation set the gate uses; never the
calibration set, which without data.calibration is the validation set); training stops when an
epoch's held-out figure (fake-quantized) is more than `forgettingGuard` below the float model's
and no better than the best epoch so far, and the best epoch (epoch 0 = untrained, i.e. what
post-training quantization gives) is kept."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...api.spec import QuantizationAwareTraining
from .base import ModelState, PassContext

log = logging.getLogger("lathe.worker.qat")

FLOAT_ONNX = "qat-float.onnx"  # the fine-tuned float model, quantized statically afterwards
_GRAPHS: dict[str, Any] = {}   # source file -> its unmodified GraphModule (converting TorchScript takes seconds)


@dataclass
class Epoch:
    epoch: int
    held_out: float
    loss: float | None = None
    seconds: float = 0.0


@dataclass
class TrainingRecord:
    metric: str
    float_held_out: float
    epochs: list[Epoch] = field(default_factory=list)
    best_epoch: int = 0
    stopped: str | None = None
    train_samples: int = 0
    held_out_samples: int = 0
    learning_rate: float = 0.0
    guard: float = 0.0
    fake_quantized: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "float_held_out": round(self.float_held_out, 5),
                "epochs": [{"epoch": e.epoch, "held_out": round(e.held_out, 5),
                            "loss": None if e.loss is None else round(e.loss, 5), "seconds": round(e.seconds, 2)}
                           for e in self.epochs],
                "best_epoch": self.best_epoch, "stopped": self.stopped, "train_samples": self.train_samples,
                "held_out_samples": self.held_out_samples, "learning_rate": self.learning_rate,
                "forgetting_guard": self.guard, "fake_quantized": self.fake_quantized}

    def note(self) -> str:
        figs = " ".join(f"{e.held_out:.3f}" for e in self.epochs)
        return (f"qat {len(self.epochs) - 1} ep (lr {self.learning_rate:g}), held-out {self.metric} float "
                f"{self.float_held_out:.3f}, by epoch {figs}, kept epoch {self.best_epoch}")


# ---------------------------------------------------------------------------- fake quantizers
def _scale_zp(lo, hi, qmin: int, qmax: int, symmetric: bool):
    """ONNX Runtime's compute_scale_zp, in torch (0 always representable)."""
    import torch  # noqa: PLC0415

    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    if symmetric:
        a = torch.maximum(lo.abs(), hi.abs())
        lo, hi = -a, a
    scale = (hi - lo).double() / float(qmax - qmin)
    tiny = float(np.finfo(np.float32).tiny)
    small = scale < tiny
    scale = torch.where(small, torch.ones_like(scale), scale)
    if symmetric:
        zp = torch.full_like(scale, round((qmin + qmax) / 2.0))
    else:
        zp = torch.round(qmin - lo.double() / scale).clamp(qmin, qmax)
    zp = torch.where(small, torch.zeros_like(zp), zp)
    return scale.float(), zp.to(torch.int32)


def _modules():
    import torch  # noqa: PLC0415

    class WeightFakeQuant(torch.nn.Module):
        """The weight's own grid at every step: what ONNX Runtime computes when it quantizes it."""

        def __init__(self, axis: int | None, qmin: int, qmax: int, symmetric: bool):
            super().__init__()
            self.axis, self.qmin, self.qmax, self.symmetric = axis, qmin, qmax, symmetric
            self.enabled = True

        def forward(self, w):
            if not self.enabled:
                return w
            d = w.detach()
            if self.axis is None:
                scale, zp = _scale_zp(d.min(), d.max(), self.qmin, self.qmax, self.symmetric)
                return torch.fake_quantize_per_tensor_affine(w, scale, zp, self.qmin, self.qmax)
            dims = [k for k in range(d.dim()) if k != self.axis]
            scale, zp = _scale_zp(d.amin(dim=dims), d.amax(dim=dims), self.qmin, self.qmax, self.symmetric)
            return torch.fake_quantize_per_channel_affine(w, scale, zp, self.axis, self.qmin, self.qmax)

    class ActFakeQuant(torch.nn.Module):
        """MinMax range over the calibration set (mode observe), then fake quantization (mode quantize)."""

        def __init__(self, qmin: int, qmax: int):
            super().__init__()
            self.qmin, self.qmax = qmin, qmax
            self.mode = "off"
            self.register_buffer("lo", torch.tensor(float("inf")))
            self.register_buffer("hi", torch.tensor(float("-inf")))

        def reset(self):
            self.lo.fill_(float("inf"))
            self.hi.fill_(float("-inf"))

        def forward(self, x):
            if self.mode == "observe":
                d = x.detach()
                self.lo.copy_(torch.minimum(self.lo, d.min()))
                self.hi.copy_(torch.maximum(self.hi, d.max()))
                return x
            if self.mode != "quantize" or not bool(torch.isfinite(self.lo)):
                return x
            scale, zp = _scale_zp(self.lo, self.hi, self.qmin, self.qmax, symmetric=False)
            return torch.fake_quantize_per_tensor_affine(x, scale, zp, self.qmin, self.qmax)

    return WeightFakeQuant, ActFakeQuant


# ---------------------------------------------------------------------------- graph
def graph_module(module, example: tuple):
    """An FX GraphModule of the source (trainable once its weights are parameters)."""
    import torch  # noqa: PLC0415

    ep = getattr(module, "_lathe_exported_program", None)
    if ep is None and isinstance(module, torch.jit.ScriptModule):
        import warnings  # noqa: PLC0415

        from torch._export.converter import TS2EPConverter  # noqa: PLC0415

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = TS2EPConverter(module, example).convert()
    elif ep is None:
        ep = torch.export.export(module, example)
    gm = ep.module()
    for n in list(gm.graph.nodes):  # shape guards of the export: the ONNX check covers shapes
        if n.op == "call_module" and n.target == "_guards_fn" and not n.users:
            gm.graph.erase_node(n)
    gm.recompile()
    return gm


def _attr(gm, node):
    obj = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


def _is(node, *names: str) -> bool:
    t = getattr(node.target, "__name__", str(node.target))
    return node.op == "call_function" and any(t.startswith(n) for n in names)


CONV = ("conv1d", "conv2d", "conv3d")
LINEAR = ("linear",)
BATCHNORM = ("batch_norm", "_native_batch_norm_legit_no_training")


def prepare(gm, per_channel: bool, w_range: tuple[int, int, bool], a_range: tuple[int, int]) -> dict[str, int]:
    """Fold BatchNorms, make Conv/Linear weights parameters, insert the fake quantizers in place.
    Returns counts of what was done."""
    import operator  # noqa: PLC0415

    import torch  # noqa: PLC0415

    WeightFakeQuant, ActFakeQuant = _modules()
    g = gm.graph
    counts = {"layers": 0, "batchnorms_folded": 0, "activations": 0}
    act_for: dict[Any, Any] = {}
    outputs: set[Any] = set()
    out_node = next(n for n in g.nodes if n.op == "output")
    torch.fx.node.map_arg(out_node.args, outputs.add)

    def act_quant(x):
        if x in act_for:
            return act_for[x]
        name = f"lathe_qat_act{len(act_for)}"
        gm.add_submodule(name, ActFakeQuant(*a_range))
        with g.inserting_after(x):
            q = g.call_module(name, (x,))
        act_for[x] = q
        return q

    layers = [n for n in g.nodes if _is(n, *CONV, *LINEAR)]
    for k, n in enumerate(layers):
        w_node = n.args[1]
        b_node = n.args[2] if len(n.args) > 2 else None
        if getattr(w_node, "op", None) != "get_attr":
            continue
        w = _attr(gm, w_node).detach().clone().float()
        b = _attr(gm, b_node).detach().clone().float() if getattr(b_node, "op", None) == "get_attr" else None
        conv = _is(n, *CONV)
        users = list(n.users)
        bn = users[0] if conv and len(users) == 1 and _is(users[0], *BATCHNORM) else None
        if bn is not None:
            legit = _is(bn, "_native_batch_norm_legit_no_training")
            training_flag = False if legit else bool(bn.args[5])
            gamma, beta, mean, var = (_attr(gm, a).detach().float() if a is not None else None for a in bn.args[1:5])
            eps = float(bn.args[6] if legit else bn.args[7])
            if training_flag or mean is None or var is None:
                bn = None
            else:
                inv = 1.0 / torch.sqrt(var + eps)
                gamma = torch.ones_like(mean) if gamma is None else gamma
                beta = torch.zeros_like(mean) if beta is None else beta
                shape = [-1] + [1] * (w.dim() - 1)
                w = w * (gamma * inv).reshape(shape)
                b = (torch.zeros_like(mean) if b is None else b)
                b = (b - mean) * gamma * inv + beta
        gm.register_parameter(f"lathe_qat_w{k}", torch.nn.Parameter(w))
        with g.inserting_before(n):
            wn = g.get_attr(f"lathe_qat_w{k}")
            bnode = None
            if b is not None:
                gm.register_parameter(f"lathe_qat_b{k}", torch.nn.Parameter(b))
                bnode = g.get_attr(f"lathe_qat_b{k}")
        fq = f"lathe_qat_wq{k}"
        gm.add_submodule(fq, WeightFakeQuant(0 if per_channel else None, *w_range))
        with g.inserting_after(wn):
            wq = g.call_module(fq, (wn,))
        args = list(n.args)
        args[1] = wq
        if len(args) > 2:
            args[2] = bnode
        elif bnode is not None:
            args.append(bnode)
        args[0] = act_quant(args[0])
        n.args = tuple(args)
        if bn is not None:
            if _is(bn, "_native_batch_norm_legit_no_training"):
                for u in list(bn.users):
                    if u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0:
                        u.replace_all_uses_with(n)
                        g.erase_node(u)
            else:
                bn.replace_all_uses_with(n)
            if not bn.users:
                g.erase_node(bn)
                counts["batchnorms_folded"] += 1
        counts["layers"] += 1
        if n in outputs or (bn is not None and bn in outputs):
            q = act_quant(n)
            out_node.args = torch.fx.node.map_arg(out_node.args, lambda x, n=n, q=q: q if x is n else x)
    counts["activations"] = len(act_for)
    g.eliminate_dead_code()
    g.lint()
    gm.recompile()
    # the original weights and BatchNorm tensors no longer used stay as buffers; nothing reads them
    for p in gm.parameters():
        p.requires_grad_(False)
    for name, p in gm.named_parameters():
        if name.startswith("lathe_qat_"):
            p.requires_grad_(True)
    return counts


def _quantizers(gm):
    WeightFakeQuant, ActFakeQuant = _modules()
    ws = [m for n, m in gm.named_children() if n.startswith("lathe_qat_wq")]
    acts = [m for n, m in gm.named_children() if n.startswith("lathe_qat_act")]
    return ws, acts


def set_mode(gm, mode: str) -> None:
    """'float' (no fake quantization), 'observe' (float, measuring ranges), 'quantize'."""
    ws, acts = _quantizers(gm)
    for m in ws:
        m.enabled = mode == "quantize"
    for m in acts:
        m.mode = {"float": "off", "observe": "observe", "quantize": "quantize"}[mode]


def strip(gm):
    """The float model with the trained weights, fake quantizers removed, as a plain GraphModule
    (torch.export's module refuses .train()/.eval(), which the ONNX exporter calls)."""
    import torch  # noqa: PLC0415

    g = gm.graph
    for n in list(g.nodes):
        if n.op == "call_module" and str(n.target).startswith(("lathe_qat_wq", "lathe_qat_act")):
            n.replace_all_uses_with(n.args[0])
            g.erase_node(n)
    g.lint()
    out = torch.fx.GraphModule(gm, g)  # copies only what the graph uses
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


# ---------------------------------------------------------------------------- training
def train(state: ModelState, ctx: PassContext, settings: QuantizationAwareTraining, quantize_pass) -> Path:
    """Fake-quantized fine-tuning of state.torch_module; returns the fine-tuned float ONNX and fills
    state.info['training'] and a note. Runs on the worker's thread count (target.threads)."""
    import torch  # noqa: PLC0415

    prev = torch.get_num_threads()
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    try:
        return _train(state, ctx, settings, quantize_pass)
    finally:
        torch.set_num_threads(prev)


def _train(state: ModelState, ctx: PassContext, settings: QuantizationAwareTraining, quantize_pass) -> Path:
    import torch  # noqa: PLC0415

    from ..errors import InvalidInput  # noqa: PLC0415
    from ..intake import export_torch, torch_args, torch_outputs  # noqa: PLC0415

    if state.torch_module is None:
        raise InvalidInput("pass:quantize", "quantize mode qat needs the PyTorch model (model.format torchscript "
                                            "or pytorch-export), first in the candidate or right after structured pruning")
    data = ctx.training
    if data is None:
        raise InvalidInput("pass:quantize", "spec.data.training: required by quantize mode qat")
    inputs = ctx.model.inputs
    cfg = quantize_pass.config
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data))
    n_hold = max(1, int(round(len(data) * settings.held_out)))
    hold_idx, train_idx = order[:n_hold], order[n_hold:]
    if len(train_idx) == 0:
        raise InvalidInput("pass:quantize", f"spec.data.training: {len(data)} sample(s) are too few to hold out "
                                            f"{settings.held_out:.0%} and train on the rest")
    hold, trainset = data.take(hold_idx), data.take(np.sort(train_idx))
    module = state.torch_module
    teacher_train = torch_outputs(module, trainset, inputs)[0]
    teacher_hold = torch_outputs(module, hold, inputs)[0]
    labels = data.labels
    use_labels = (str(ctx.spec.task.type) == "classification" and labels is not None and labels.ndim == 1
                  and teacher_train.ndim == 2)
    metric = "top-1" if use_labels else "cosine"
    example = torch_args(data.head(max(2, min(4, len(data)))).feeds, inputs)
    fresh = not state.info.get("descriptions")  # no pass before this one: the source's own graph
    key = f"{ctx.model.source}:{ctx.model.source.stat().st_mtime_ns}" if fresh else None
    if key is not None and key in _GRAPHS:
        gm = copy.deepcopy(_GRAPHS[key])
    else:
        gm = graph_module(module, example)
        if key is not None:
            _GRAPHS.clear()
            _GRAPHS[key] = copy.deepcopy(gm)

    symmetric_w = cfg.weight_type != "uint8"
    if symmetric_w:
        w_range = (-64, 64) if quantize_pass.reduce_range() else (-127, 127)
    else:
        w_range = (0, 127) if quantize_pass.reduce_range() else (0, 255)
    a_range = (-128, 127) if cfg.activation_type == "int8" else (0, 255)
    counts = prepare(gm, quantize_pass._per_channel(), (*w_range, symmetric_w), a_range)
    if not counts["layers"]:
        raise InvalidInput("pass:quantize", "quantize mode qat found no Conv or Linear layer with a constant weight "
                                            "to train")
    cal = ctx.calibration.head(cfg.calibration.samples if cfg.calibration else None)
    batch = settings.batch_size

    def run(ds, b=64):
        outs = []
        for feeds in ds.batches(b):
            o = gm(*torch_args(feeds, inputs))
            outs.append(o[0] if isinstance(o, (tuple, list)) else o)
        return torch.cat(outs)

    def calibrate():
        set_mode(gm, "observe")
        for m in _quantizers(gm)[1]:
            m.reset()
        with torch.no_grad():
            run(cal)
        set_mode(gm, "quantize")

    hold_labels = torch.from_numpy(hold.labels.astype(np.int64)) if use_labels else None
    teacher_hold_t = torch.from_numpy(np.asarray(teacher_hold))

    def score() -> float:
        with torch.no_grad():
            out = run(hold)
        if use_labels:
            return float((out.argmax(1) == hold_labels).float().mean())
        a = out.reshape(len(out), -1).double()
        t = teacher_hold_t.reshape(len(out), -1).double()
        return float(torch.nn.functional.cosine_similarity(a, t, dim=1).mean())

    set_mode(gm, "float")
    rec = TrainingRecord(metric=metric, float_held_out=score(), train_samples=len(trainset),
                         held_out_samples=len(hold), learning_rate=settings.learning_rate,
                         guard=settings.forgetting_guard, fake_quantized=counts)
    calibrate()
    rec.epochs.append(Epoch(0, score()))
    best = rec.epochs[0].held_out
    best_state = copy.deepcopy(gm.state_dict())
    ctx.report("qat", 0.0, f"held-out {metric}: float {rec.float_held_out:.4f}, fake-quantized before training "
                           f"{best:.4f}")
    params = [p for p in gm.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=settings.learning_rate)
    train_labels = torch.from_numpy(trainset.labels.astype(np.int64)) if use_labels else None
    teacher_t = torch.from_numpy(np.asarray(teacher_train))
    floor = rec.float_held_out - settings.forgetting_guard
    for epoch in range(1, settings.epochs + 1):
        t0 = time.monotonic()
        perm = rng.permutation(len(trainset))
        losses = []
        for i in range(0, len(perm), batch):
            b = perm[i:i + batch]
            opt.zero_grad()
            out = gm(*torch_args(trainset.take(b).feeds, inputs))
            out = out[0] if isinstance(out, (tuple, list)) else out
            if use_labels:
                loss = torch.nn.functional.cross_entropy(out, train_labels[b])
            else:
                loss = torch.nn.functional.mse_loss(out, teacher_t[b])
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step()
            losses.append(loss.item())
        calibrate()
        s = score()
        if not np.isfinite(s):
            s = float("-inf")
        rec.epochs.append(Epoch(epoch, s, float(np.mean(losses)) if losses else None, time.monotonic() - t0))
        ctx.report("qat", epoch / settings.epochs,
                   f"epoch {epoch}/{settings.epochs}: held-out {metric} {s:.4f} (float {rec.float_held_out:.4f}, "
                   f"best {max(best, s):.4f})")
        if s >= best:
            best, rec.best_epoch = s, epoch
            best_state = copy.deepcopy(gm.state_dict())
        elif s < floor:
            rec.stopped = (f"forgetting guard: stopped after epoch {epoch} of {settings.epochs}, held-out {metric} "
                           f"{s:.4f} is {rec.float_held_out - s:.4f} below the float model's "
                           f"{rec.float_held_out:.4f} (forgettingGuard {settings.forgetting_guard:g}); "
                           f"kept epoch {rec.best_epoch} ({best:.4f})")
            break
    gm.load_state_dict(best_state)
    model = strip(gm)
    dst = ctx.workdir / FLOAT_ONNX
    export_torch(model, inputs, ctx.calibration, dst, stage="pass:quantize")
    state.info["training"] = rec.as_dict()
    state.notes.append(rec.note())
    if rec.stopped:
        state.warnings.append(rec.stopped)
    log.info("%s: %s%s", ctx.candidate, rec.note(), f"; {rec.stopped}" if rec.stopped else "")
    return dst
