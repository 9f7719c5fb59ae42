"""`distill`: knowledge distillation for PyTorch sources. A student is made from the teacher and
trained on the teacher's outputs over spec.data.training; the student's ONNX export is what the
later passes of the candidate (quantize, graph-optimize) and the gate see.

The student:
* narrower (`width`, CNNs): structured pruning's channel groups (prune.py) keep the share `width` of
  each group's channels, the ones with the largest L1 norm, so the student starts from the teacher's
  kept channels (the same rounding: multiples of 16 for layers of 32 channels or more);
* shallower (`layers`, transformers): a stack of identical blocks is found by parameter names
  (`bert.encoder.layer.<i>.…`, the same names and shapes for every i); `layers` of them are kept,
  evenly spaced with the first and the last (0, 3, 5 of 6: on all-MiniLM-L6-v2 the untrained student
  starts at mean cosine 0.66 to the teacher, every other layer 0, 2, 4 at 0.36), with the teacher's
  weights, and the hidden state skips the others in the FX graph of the model.
Without either setting: shallower when the model has such a stack, else half width.

Training: Adam at a low learning rate on (1 - heldOut) of the training set; loss `alpha` x the
distillation term (KL of the temperature-softened class probabilities x T^2, or MSE, or 1 - cosine
of the outputs) + (1 - alpha) x cross-entropy with the hard labels when the set has class labels,
+ featureWeight x MSE of named intermediate outputs (teacher's kept channels for a narrower student,
the teacher's layer at the end of each block a student layer replaces for a shallower one). Each
epoch is scored on the held-out share (top-1 with labels, else mean cosine to the teacher's
outputs), never on the validation set, and its mean cosine to the teacher's outputs is recorded
beside (a trace of the weights that tells epochs of equal top-1 apart); training stops after
`patience` epochs without a better figure and the best epoch (epoch 0 = the student untrained) is
kept."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from ...api.spec import Distillation
from .base import ModelState, Pass, PassConfig, PassContext

log = logging.getLogger("lathe.worker.distill")

STUDENT_ONNX = "student.onnx"
_STUDENTS: dict[str, tuple] = {}  # one trained student per worker run: key -> (module, ONNX bytes, record, candidate)


class DistillConfig(PassConfig):
    width: float | None = Field(None, gt=0, le=1)
    layers: int | None = Field(None, ge=1, le=1024)
    distillation: Distillation | None = None


@dataclass
class DistillRecord:
    student: str
    metric: str
    teacher_held_out: float
    loss: str
    temperature: float
    alpha: float
    labels: bool
    feature_layers: list[str]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    stopped: str | None = None
    train_samples: int = 0
    held_out_samples: int = 0
    learning_rate: float = 0.0
    params_teacher: int = 0
    params_student: int = 0
    kept: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"student": self.student, "metric": self.metric, "teacher_held_out": round(self.teacher_held_out, 5),
                "loss": self.loss, "temperature": self.temperature, "alpha": self.alpha, "hard_labels": self.labels,
                "feature_layers": self.feature_layers, "epochs": self.epochs, "best_epoch": self.best_epoch,
                "stopped": self.stopped, "train_samples": self.train_samples,
                "held_out_samples": self.held_out_samples, "learning_rate": self.learning_rate,
                "params_teacher": self.params_teacher, "params_student": self.params_student, "kept": self.kept,
                "seconds": self.seconds}

    def note(self) -> str:
        figs = " ".join(f"{e['held_out']:.3f}" for e in self.epochs)
        return (f"student {self.student}, params {self.params_teacher / 1e3:.0f}k->{self.params_student / 1e3:.0f}k; "
                f"distilled {len(self.epochs) - 1} ep ({self.loss}"
                + (f" T={self.temperature:g}" if self.loss == "kl" else "")
                + (f", alpha {self.alpha:g} with labels" if self.labels else "")
                + (f", features {len(self.feature_layers)}" if self.feature_layers else "")
                + f", lr {self.learning_rate:g}), held-out {self.metric} teacher {self.teacher_held_out:.3f}, "
                  f"by epoch {figs}, kept epoch {self.best_epoch}")


class Distill(Pass):
    name = "distill"
    Config = DistillConfig

    @classmethod
    def check(cls, c: DistillConfig, ctx: dict[str, Any]) -> list[tuple[str, str]]:
        p: list[tuple[str, str]] = []
        if ctx.get("format") not in ("torchscript", "pytorch-export"):
            p.append(("type", f"distillation trains a student made from the PyTorch model: it needs model.format "
                              f"torchscript or pytorch-export, not {ctx.get('format')}"))
        if ctx.get("index", 0) != 0:
            p.append(("type", "distill builds the student from the PyTorch model and must be the first pass "
                              f"(after {[q.type for q in ctx.get('passes', [])[: ctx.get('index', 0)]]})"))
        if c.width is not None and c.layers is not None:
            p.append(("layers", "give width (a narrower CNN) or layers (a shallower transformer), not both"))
        if c.width == 1 and c.layers is None:
            p.append(("width", "width 1 keeps every channel: the student would be the teacher"))
        d = c.distillation or Distillation()
        if d.alpha == 0 and d.feature_layers:
            p.append(("distillation.featureLayers", "alpha 0 trains on the labels alone; feature matching would "
                                                    "bring the teacher back"))
        data = ctx.get("data") or {}
        if not data.get("training", True):
            p.append(("spec.data.training", f"required by candidate '{ctx.get('candidate')}' pass "
                                            f"{ctx.get('index', 0)} (distill)"))
        return p

    def describe(self) -> str:
        if self.config.layers is not None:
            return f"distill({self.config.layers} layers)"
        if self.config.width is not None:
            return f"distill(width {self.config.width:g})"
        return "distill"

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        import torch  # noqa: PLC0415

        prev = torch.get_num_threads()
        if ctx.threads:
            torch.set_num_threads(ctx.threads)
        try:
            return self._run(state, ctx)
        finally:
            torch.set_num_threads(prev)

    # ------------------------------------------------------------------ run
    def _run(self, state: ModelState, ctx: PassContext) -> ModelState:  # noqa: PLR0915
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: N812, PLC0415

        from ..intake import export_torch, load_torch, torch_args, torch_outputs  # noqa: PLC0415
        from .qat import graph_module  # noqa: PLC0415

        if state.torch_module is None:
            raise _invalid("distill needs the PyTorch model (model.format torchscript or pytorch-export), "
                           "first in the candidate")
        data = ctx.training
        if data is None:
            raise _invalid("spec.data.training: required by pass distill")
        cfg = self.config.distillation or Distillation()
        inputs = ctx.model.inputs
        teacher = state.torch_module
        started = time.monotonic()
        # candidates [distill] and [distill, quantize] train the same student: once per worker run
        key = json.dumps([str(ctx.model.source), ctx.model.source.stat().st_mtime_ns, str(data.path), len(data),
                          self.config.model_dump(mode="json"), ctx.threads, str(ctx.spec.task.type),
                          ctx.spec.task.output])
        if key in _STUDENTS:
            student, onnx_bytes, rec, first = _STUDENTS[key]
            dst = ctx.workdir / STUDENT_ONNX
            dst.write_bytes(onnx_bytes)
            ctx.report("distill", 1.0, f"the student candidate {first} trained ({rec.student})")
            return self._finish(state, ctx, copy.deepcopy(student), dst, rec, same_as=first)
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        order = rng.permutation(len(data))
        n_hold = max(1, int(round(len(data) * cfg.held_out)))
        hold_idx, train_idx = order[:n_hold], np.sort(order[n_hold:])
        if len(train_idx) == 0:
            raise _invalid(f"spec.data.training: {len(data)} sample(s) are too few to hold out "
                           f"{cfg.held_out:.0%} and train on the rest")
        hold, trainset = data.take(hold_idx), data.take(train_idx)
        out_index = ctx.model.outputs.index(ctx.spec.task.output) if ctx.spec.task.output in ctx.model.outputs else 0
        t_train = torch.from_numpy(np.asarray(torch_outputs(teacher, trainset, inputs)[out_index])).float()
        t_hold = torch.from_numpy(np.asarray(torch_outputs(teacher, hold, inputs)[out_index])).float()
        labels = data.labels
        use_labels = (str(ctx.spec.task.type) == "classification" and labels is not None and labels.ndim == 1
                      and t_train.ndim == 2 and cfg.alpha < 1)
        if cfg.alpha == 0 and not use_labels:
            raise _invalid("spec.candidates: distillation.alpha 0 trains on hard labels alone, and the training set "
                           "has no class labels")
        loss_kind = cfg.loss or ("kl" if str(ctx.spec.task.type) == "classification" and t_train.ndim == 2
                                 else "cosine")
        if loss_kind == "kl" and t_train.ndim != 2:
            raise _invalid(f"distillation.loss kl needs class logits [N, classes]; the output is shaped "
                           f"{list(t_train.shape)} (use mse or cosine)")
        example = torch_args(data.head(max(2, min(4, len(data)))).feeds, inputs)
        params_teacher = _count(teacher.named_parameters())

        # ---------------------------------------------------------- the student
        names = [n for n, _ in teacher.named_parameters()]
        shapes = {n: tuple(p.shape) for n, p in teacher.named_parameters()}
        stack = layer_stack(names, shapes)
        depth = self.config.layers is not None or (self.config.width is None and stack is not None)
        kept_channels: dict[str, Any] = {}
        taps: dict[str, tuple[Any, Any, Any]] = {}  # feature name -> (teacher node, student node, channel index)
        teacher_gm = None
        if cfg.feature_layers:
            teacher_gm = _plain(graph_module(load_torch(ctx.model.source, ctx.model.format), example))
        if depth:
            if stack is None:
                raise _invalid("distill layers: no stack of identical layers found in the model's parameters "
                               "(e.g. encoder.layer.<i>); use width for a narrower student")
            prefix, n_layers = stack
            k = self.config.layers if self.config.layers is not None else max(1, (n_layers + 1) // 2)
            if k >= n_layers:
                raise _invalid(f"distill layers {k}: the teacher has {n_layers} layers ({prefix}); the student must "
                               "have fewer")
            keep = keep_layers(n_layers, k)
            student = _plain(graph_module(load_torch(ctx.model.source, ctx.model.format), example))
            s_ends = _drop_layers(student, prefix, n_layers, keep)
            desc = f"{len(keep)} of {n_layers} layers {keep} ({prefix})"
            kept_record: dict[str, Any] = {"prefix": prefix, "teacher_layers": n_layers, "layers": keep}
            if cfg.feature_layers:
                t_ins, t_last = _boundaries(teacher_gm, prefix, n_layers)
                t_out = {i: (t_ins[i + 1] if i + 1 < n_layers else t_last) for i in range(n_layers)}
                ends = {(keep[j + 1] - 1 if j + 1 < len(keep) else n_layers - 1): keep[j] for j in range(len(keep))}
                for name in cfg.feature_layers:
                    m = re.fullmatch(re.escape(prefix) + r"\.(\d+)", name)
                    if not m or int(m.group(1)) not in ends:
                        raise _invalid(f"distillation.featureLayers: '{name}' does not end a block of the student; "
                                       f"one of {[f'{prefix}.{t}' for t in sorted(ends)]}")
                    t = int(m.group(1))
                    taps[name] = (t_out[t], s_ends[ends[t]], None)
        else:
            width = self.config.width if self.config.width is not None else 0.5
            from ..errors import InvalidInput  # noqa: PLC0415
            from .prune import Prune, PruneConfig, slice_channels  # noqa: PLC0415

            smod = load_torch(ctx.model.source, ctx.model.format)
            if hasattr(smod, "_lathe_exported_program"):
                del smod._lathe_exported_program  # its weights are about to change shape
            pruner = Prune(PruneConfig(method="structured", sparsity=1 - width))
            groups = pruner._groups(smod, ctx)
            cut, kept_channels = slice_channels(smod, groups, 1 - width) if groups else ([], {})
            if not cut:
                raise InvalidInput("pass:distill", f"distill width {width:g}: no prunable channel group in the model "
                                                   "(Conv/Linear feeding one Conv/Linear through per-channel ops); "
                                                   "for a transformer use layers")
            student = _plain(graph_module(smod, example))
            desc = f"width {width:g} ({', '.join(cut)})"
            kept_record = {"width": width, "layers": cut}
            for name in cfg.feature_layers:
                tn, sn = _weight_user(teacher_gm, name), _weight_user(student, name)
                if tn is None or sn is None:
                    avail = sorted(n[: -len('.weight')] for n in names if n.endswith(".weight"))
                    raise _invalid(f"distillation.featureLayers: '{name}' is not a Conv/Linear/BatchNorm of the model; "
                                   f"one of {avail}")
                taps[name] = (tn, sn, kept_channels.get(name))
        trainable = _make_trainable(student)
        params_student = sum(p.numel() for p in trainable)
        t_rec = _insert_recorders(teacher_gm, {n: v[0] for n, v in taps.items()}) if taps else {}
        s_rec = _insert_recorders(student, {n: v[1] for n, v in taps.items()}) if taps else {}

        # ---------------------------------------------------------- training
        def forward(gm, feeds):
            o = gm(*torch_args(feeds, inputs))
            return (o[out_index] if isinstance(o, (tuple, list)) else o).float()

        train_labels = torch.from_numpy(trainset.labels.astype(np.int64)) if use_labels else None
        metric = "top-1" if use_labels or (str(ctx.spec.task.type) == "classification" and labels is not None
                                           and labels.ndim == 1 and t_train.ndim == 2) else "cosine"
        hold_lab = (torch.from_numpy(hold.labels.astype(np.int64)) if metric == "top-1" else None)

        def cosine(out, ref) -> float:
            a, t = out.reshape(len(out), -1).double(), ref.reshape(len(out), -1).double()
            return float(F.cosine_similarity(a, t, dim=1).mean())

        def figure(out, ref) -> float:
            if metric == "top-1":
                return float((out.argmax(1) == hold_lab).float().mean())
            return cosine(out, ref)

        def score() -> tuple[float, float]:
            """The held-out figure, and the mean cosine of the student's outputs to the teacher's (a finer
            trace of the weights than top-1: it tells apart epochs of equal top-1)."""
            with torch.no_grad():
                out = torch.cat([forward(student, f) for f in hold.batches(64)])
            return figure(out, t_hold), cosine(out, t_hold)

        def out_loss(s, t):
            if loss_kind == "kl":
                tt = cfg.temperature
                return F.kl_div(F.log_softmax(s / tt, 1), F.softmax(t / tt, 1), reduction="batchmean") * tt * tt
            if loss_kind == "mse":
                return F.mse_loss(s, t)
            return (1 - F.cosine_similarity(s.reshape(len(s), -1), t.reshape(len(t), -1), dim=1)).mean()

        rec = DistillRecord(student=desc, metric=metric, teacher_held_out=figure(t_hold, t_hold), loss=loss_kind,
                            temperature=cfg.temperature, alpha=cfg.alpha, labels=use_labels,
                            feature_layers=list(cfg.feature_layers), train_samples=len(trainset),
                            held_out_samples=len(hold), learning_rate=cfg.learning_rate,
                            params_teacher=params_teacher, params_student=params_student, kept=kept_record)
        best, cos = score()
        rec.epochs.append({"epoch": 0, "held_out": round(best, 5), "teacher_cosine": round(cos, 6), "loss": None,
                           "seconds": 0.0})
        best_state = copy.deepcopy(student.state_dict())
        ctx.report("distill", 0.0, f"student {desc}: held-out {metric} {best:.4f} before training "
                                   f"(teacher {rec.teacher_held_out:.4f})")
        opt = torch.optim.Adam(trainable, lr=cfg.learning_rate)
        since_best = 0
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.monotonic()
            perm = rng.permutation(len(trainset))
            losses = []
            for i in range(0, len(perm), cfg.batch_size):
                b = np.sort(perm[i:i + cfg.batch_size])
                feeds = trainset.take(b).feeds
                opt.zero_grad()
                s_out = forward(student, feeds)
                loss = cfg.alpha * out_loss(s_out, t_train[b]) if cfg.alpha > 0 else s_out.sum() * 0
                if use_labels:
                    loss = loss + (1 - cfg.alpha) * F.cross_entropy(s_out, train_labels[b])
                if taps:
                    with torch.no_grad():
                        teacher_gm(*torch_args(feeds, inputs))
                    feat = 0.0
                    for name, (_, _, idx) in taps.items():
                        tf = t_rec[name].value
                        if idx is not None:
                            tf = tf.index_select(1, idx)
                        feat = feat + F.mse_loss(s_rec[name].value.float(), tf.float())
                    loss = loss + cfg.feature_weight * feat / len(taps)
                if not torch.isfinite(loss):
                    break
                loss.backward()
                opt.step()
                losses.append(loss.item())
            s, cos = score()
            if not np.isfinite(s):
                s = float("-inf")
            rec.epochs.append({"epoch": epoch, "held_out": round(s, 5), "teacher_cosine": round(cos, 6),
                               "loss": round(float(np.mean(losses)), 5) if losses else None,
                               "seconds": round(time.monotonic() - t0, 2)})
            ctx.report("distill", epoch / cfg.epochs,
                       f"epoch {epoch}/{cfg.epochs}: held-out {metric} {s:.4f} (teacher {rec.teacher_held_out:.4f}, "
                       f"best {max(best, s):.4f})")
            if s > best:
                best, rec.best_epoch, since_best = s, epoch, 0
                best_state = copy.deepcopy(student.state_dict())
            else:
                since_best += 1
                if since_best >= cfg.patience:
                    rec.stopped = (f"early stop after epoch {epoch} of {cfg.epochs}: no better held-out {metric} for "
                                   f"{cfg.patience} epoch(s); kept epoch {rec.best_epoch} ({best:.4f})")
                    break
        student.load_state_dict(best_state)
        _remove_recorders(student)
        student = _plain(student)
        for p in student.parameters():
            p.requires_grad_(False)
        if depth or str(ctx.model.format) == "pytorch-export":
            # the legacy exporter bakes the example's batch into a graph that torch.export made
            # symbolic: export the student's program with the declared dynamic dims instead
            student._lathe_exported_program = torch.export.export(student, example,
                                                                  dynamic_shapes=_dynamic_shapes(inputs))
        dst = ctx.workdir / STUDENT_ONNX
        export_torch(student, inputs, ctx.calibration, dst, stage="pass:distill")
        rec.params_student = _count(student.named_parameters())
        rec.seconds = round(time.monotonic() - started, 1)
        while len(_STUDENTS) >= 4:  # a few students per run (a cache, not a store)
            _STUDENTS.pop(next(iter(_STUDENTS)))
        _STUDENTS[key] = (copy.deepcopy(student), dst.read_bytes(), rec, ctx.candidate)
        return self._finish(state, ctx, student, dst, rec)

    def _finish(self, state: ModelState, ctx: PassContext, student, dst, rec: DistillRecord,
                same_as: str | None = None) -> ModelState:
        state.onnx_path = dst
        state.torch_module = student
        state.info["distillation"] = {**rec.as_dict(), **({"same_student_as": same_as} if same_as else {})}
        state.notes.append(rec.note() + (f" (trained once, for candidate {same_as})" if same_as else ""))
        if rec.stopped:
            state.info["distillation_stopped"] = rec.stopped
        log.info("%s: %s%s", ctx.candidate, rec.note(), f"; {rec.stopped}" if rec.stopped else "")
        return state


# ---------------------------------------------------------------------------- helpers
def _invalid(msg: str):
    from ..errors import InvalidInput  # noqa: PLC0415

    return InvalidInput("pass:distill", msg)


def _dynamic_shapes(inputs) -> tuple:
    """torch.export dims for the declared inputs: each named (string) dim dynamic, else axis 0."""
    import torch  # noqa: PLC0415

    dims: dict[str, Any] = {}
    out = []
    for i in inputs:
        axes = {k: d for k, d in enumerate(i.shape) if isinstance(d, str)} or {0: "batch"}
        out.append({k: dims.setdefault(d, torch.export.Dim(re.sub(r"\W", "_", d), min=1, max=65536))
                    for k, d in axes.items()})
    return tuple(out)


def _count(named) -> int:
    return int(sum(p.numel() for _, p in named))


def _plain(gm):
    """A plain GraphModule of the same graph (torch.export's module refuses .train()/.eval())."""
    import torch  # noqa: PLC0415

    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    out = torch.fx.GraphModule(gm, gm.graph)  # copies only the attributes the graph uses
    return out


def layer_stack(names: list[str], shapes: dict[str, tuple]) -> tuple[str, int] | None:
    """(prefix, count) of the longest run of identical blocks `prefix.<i>.rest` (same rest names and
    shapes for i = 0..count-1), or None."""
    groups: dict[str, dict[int, dict[str, tuple]]] = {}
    for n in names:
        m = re.match(r"^(.*?)\.(\d+)\.(.+)$", n)
        if m:
            groups.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = shapes[n]
    best = None
    for prefix, blocks in groups.items():
        idx = sorted(blocks)
        if len(idx) < 2 or idx != list(range(len(idx))):
            continue
        if any(blocks[i] != blocks[0] for i in idx):
            continue
        if best is None or len(idx) > best[1]:
            best = (prefix, len(idx))
    return best


def keep_layers(n_layers: int, k: int) -> list[int]:
    """k of n layers evenly spaced, the first and the last kept (0, 3, 5 of 6; 0, 2, 4, 6 of 7)."""
    if k <= 1:
        return [n_layers - 1]
    return sorted({int(math.floor(j * (n_layers - 1) / (k - 1) + 0.5)) for j in range(k)})


def _levels(gm, prefix: str) -> dict[Any, int]:
    """Per FX node: the deepest layer of the stack whose parameters it depends on (-1: none)."""
    rx = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    lvl: dict[Any, int] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            m = rx.match(str(n.target))
            lvl[n] = int(m.group(1)) if m else -1
        else:
            lvl[n] = max((lvl[a] for a in n.all_input_nodes), default=-1)
    return lvl


def _boundaries(gm, prefix: str, n_layers: int):
    """The hidden state entering each layer (a node all of whose users are in that layer) and the
    last layer's output (its last node using its own parameters, e.g. the closing LayerNorm)."""
    lvl = _levels(gm, prefix)
    nodes = list(gm.graph.nodes)
    ins = {}
    for i in range(n_layers):
        cands = [m for m in nodes if m.op not in ("get_attr", "output") and lvl[m] < i and m.users
                 and all(lvl[u] == i and u.op != "output" for u in m.users) and _is_float_tensor(m)]
        if len(cands) > 1:
            cands = [m for m in cands if lvl[m] == i - 1] or cands
        if len(cands) != 1:
            raise _invalid(f"distill layers: cannot find where layer {i} of {prefix} starts in the model's graph "
                           f"({len(cands)} candidates); the layers are not a plain sequence")
        ins[i] = cands[0]
    last = n_layers - 1
    users_of_params = [m for m in nodes if m.op == "call_function" and lvl[m] == last
                       and any(a.op == "get_attr" and lvl[a] == last for a in m.all_input_nodes)]
    return ins, (users_of_params[-1] if users_of_params else None)


def _is_float_tensor(node) -> bool:
    v = node.meta.get("val")
    if v is None:
        return True
    return getattr(v, "is_floating_point", lambda: False)() if hasattr(v, "dtype") else False


def _drop_layers(gm, prefix: str, n_layers: int, keep: list[int]) -> dict[int, Any]:
    """Skip the layers not in `keep`: the hidden state leaving a run of dropped layers is replaced by
    the one entering it. Returns, per kept layer, the node of its output in the student."""
    ins, last = _boundaries(gm, prefix, n_layers)
    outs = {i: (ins[i + 1] if i + 1 < n_layers else last) for i in range(n_layers)}
    if (n_layers - 1) not in keep and last is None:
        raise _invalid(f"distill layers: cannot find the output of the last layer of {prefix}")
    for i in sorted(set(range(n_layers)) - set(keep), reverse=True):
        a = i
        while a - 1 >= 0 and (a - 1) not in keep:
            a -= 1
        outs[i].replace_all_uses_with(ins[a])
    # aten.dropout counts as impure (random) even in inference form: without this the dropped
    # layers would still be computed, their results unused
    gm.graph.eliminate_dead_code(is_impure_node=lambda n: n.is_impure() and not (
        n.op == "call_function" and "dropout" in getattr(n.target, "__name__", str(n.target))))
    gm.graph.lint()
    gm.recompile()
    return {i: outs[i] for i in keep}


def _weight_user(gm, module_name: str):
    if gm is None:
        return None
    for n in gm.graph.nodes:
        if n.op == "call_function" and any(a.op == "get_attr" and str(a.target) == module_name + ".weight"
                                           for a in n.all_input_nodes):
            return n
    return None


def _make_trainable(gm) -> list:
    """Float weights the graph reads become trainable parameters (TorchScript conversions hold them
    as buffers); BatchNorm statistics stay fixed (the graph is in inference form)."""
    import torch  # noqa: PLC0415

    out = []
    seen: set[str] = set()
    for n in gm.graph.nodes:
        if n.op != "get_attr" or str(n.target) in seen:
            continue
        target = str(n.target)
        seen.add(target)
        owner_name, _, attr = target.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        t = getattr(owner, attr)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or attr.startswith(("running_", "num_batches")):
            continue
        if isinstance(t, torch.nn.Parameter):
            t.requires_grad_(True)
            out.append(t)
            continue
        owner._buffers.pop(attr, None)
        if hasattr(owner, attr):
            delattr(owner, attr)
        p = torch.nn.Parameter(t.detach().clone(), requires_grad=True)
        owner.register_parameter(attr, p)
        out.append(p)
    return out


def _recorder():
    import torch  # noqa: PLC0415

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.value = None

        def forward(self, x):
            self.value = x
            return x

    return Recorder()


def _insert_recorders(gm, nodes: dict[str, Any]) -> dict[str, Any]:
    recs = {}
    for k, (name, node) in enumerate(nodes.items()):
        sub = f"lathe_distill_tap{k}"
        rec = _recorder()
        gm.add_submodule(sub, rec)
        with gm.graph.inserting_after(node):
            r = gm.graph.call_module(sub, (node,))
        node.replace_all_uses_with(r, delete_user_cb=lambda u, r=r: u is not r)
        recs[name] = rec
    gm.graph.lint()
    gm.recompile()
    return recs


def _remove_recorders(gm) -> None:
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and str(n.target).startswith("lathe_distill_tap"):
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
    gm.graph.lint()
    gm.recompile()
