"""`prune`: structured (PyTorch sources: really removes conv/linear channels, then fine-tunes) and
unstructured (magnitude; zeros weights in the ONNX graph and is reported with its measured, usually
absent, speedup). 2:4 sparsity needs a GPU runtime and is rejected on CPU.

Structured pruning finds channel groups on an ONNX export of the module that keeps parameter names:
a Conv (group 1) or Linear whose output goes, through per-channel ops only (BatchNorm, ReLU, pooling…),
into exactly one Conv or (through Flatten) Linear. Channels with the smallest L1 norm go; the kept
count is rounded to a multiple of 16 for layers of 32 channels or more (ONNX Runtime's blocked
convolutions need it; otherwise the pruned model gets slower). Layers feeding residual adds,
concatenations or graph outputs are left alone."""

from __future__ import annotations

import copy
import logging
from typing import Any

from pydantic import Field

from ...api.spec import FineTune, PruneMethod
from .base import ModelState, Pass, PassConfig, PassContext

log = logging.getLogger("lathe.worker.prune")

PER_CHANNEL_OPS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "MaxPool", "AveragePool", "HardSwish",
                   "HardSigmoid", "Elu", "Selu", "Identity", "Dropout", "PRelu_", "Softplus", "Mish", "Gelu"}


class PruneConfig(PassConfig):
    method: PruneMethod
    sparsity: float = Field(0.25, ge=0, lt=1)
    fine_tune: FineTune | None = None
    exclude_nodes: list[str] = Field(default_factory=list)


class Prune(Pass):
    name = "prune"
    Config = PruneConfig

    @classmethod
    def check(cls, c: PruneConfig, ctx: dict[str, Any]) -> list[tuple[str, str]]:
        p: list[tuple[str, str]] = []
        if c.method == "2:4":
            p.append(("method", "2:4 structured sparsity needs a GPU runtime (sparse tensor cores); "
                                "use structured or unstructured on CPU"))
        if c.method == "structured":
            if ctx.get("format") not in ("torchscript", "pytorch-export"):
                p.append(("method", f"structured pruning needs a PyTorch source (model.format torchscript or "
                                    f"pytorch-export), not {ctx.get('format')}"))
            earlier = [q.type for q in ctx.get("passes", [])[: ctx.get("index", 0)]]
            if earlier:
                p.append(("type", f"structured pruning works on the PyTorch model and must come first "
                                  f"(after {earlier})"))
        if c.fine_tune is not None and c.method != "structured":
            p.append(("fineTune", "only used by structured pruning"))
        data = ctx.get("data") or {}
        if (c.method == "structured" and c.fine_tune is not None and c.fine_tune.epochs > 0
                and not data.get("training", True) and not data.get("calibration", True)):
            p.append(("spec.data.training", f"required by candidate '{ctx.get('candidate')}' pass {ctx.get('index', 0)} "
                                            "(prune fineTune) when there is no spec.data.calibration: fine-tuning "
                                            "would otherwise train on the validation set the gate measures"))
        return p

    def describe(self) -> str:
        return f"prune({self.config.method},{self.config.sparsity:.0%})"

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        if self.config.method == "unstructured":
            return self._unstructured(state, ctx)
        return self._structured(state, ctx)

    # ------------------------------------------------------------ unstructured
    def _unstructured(self, state: ModelState, ctx: PassContext) -> ModelState:
        import numpy as np  # noqa: PLC0415
        import onnx  # noqa: PLC0415
        from onnx import numpy_helper  # noqa: PLC0415

        m = onnx.load(str(state.onnx_path))
        weights = {n.input[1] for n in m.graph.node
                   if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.name not in self.config.exclude_nodes}
        zeroed = total = 0
        for init in m.graph.initializer:
            if init.name not in weights:
                continue
            w = numpy_helper.to_array(init)
            if w.ndim < 2 or w.dtype.kind != "f":
                continue
            k = int(w.size * self.config.sparsity)
            if k == 0:
                continue
            thr = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
            w = np.where(np.abs(w) <= thr, np.zeros_like(w), w)
            zeroed += int((w == 0).sum())
            total += w.size
            init.CopyFrom(numpy_helper.from_array(w, init.name))
        dst = ctx.workdir / "pruned-unstructured.onnx"
        onnx.save(m, str(dst))
        state.onnx_path = dst
        state.notes.append(f"{zeroed / max(total, 1):.0%} of weights zero")
        state.warnings.append("unstructured sparsity: zeros are stored but ONNX Runtime on CPU computes them "
                              "anyway (no speedup expected; see the measured speedup)")
        state.torch_module = None
        return state

    # ------------------------------------------------------------ structured
    def _structured(self, state: ModelState, ctx: PassContext) -> ModelState:
        from ..intake import export_torch, torch_outputs  # noqa: PLC0415

        if state.torch_module is None:
            raise _invalid("structured pruning needs the PyTorch model (model.format torchscript or pytorch-export)")
        module = state.torch_module
        module.eval()
        inputs = ctx.model.inputs
        cal = ctx.calibration
        groups = self._groups(module, ctx)
        before = _param_count(module)
        if not groups:
            state.warnings.append("structured pruning found no prunable channel group (residual/concat layers are kept)")
            return state
        ft = self.config.fine_tune or FineTune()
        train_set, source = fine_tune_data(ctx)
        if ft.epochs > 0 and train_set is None:
            state.warnings.append(source)
        # teacher outputs before pruning, for distillation when there are no labels
        teacher = torch_outputs(module, train_set, inputs)[0] if ft.epochs > 0 and train_set is not None else None
        pruned_desc, _ = slice_channels(module, groups, self.config.sparsity)
        after = _param_count(module)
        state.notes.append(f"params {before / 1e3:.0f}k->{after / 1e3:.0f}k")
        state.info["params_before"] = before
        state.info["params_after"] = after
        state.info["pruned_layers"] = pruned_desc
        log.info("pruned %s: %d -> %d parameters", pruned_desc, before, after)
        if ft.epochs > 0 and train_set is not None:
            note = _fine_tune(module, ctx, train_set, source, teacher, ft)
            state.notes.append(note)
            state.info["fine_tune_data"] = source
        elif ft.epochs > 0:
            state.notes.append("not fine-tuned")
        module.eval()
        dst = ctx.workdir / "pruned.onnx"
        export_torch(module, inputs, cal, dst, stage="pass:prune")
        state.onnx_path = dst
        state.torch_module = module
        return state

    def _groups(self, module, ctx: PassContext) -> list[dict[str, Any]]:
        """Prunable channel groups, found on an export that keeps parameter names and BatchNorms."""
        import tempfile  # noqa: PLC0415
        from pathlib import Path  # noqa: PLC0415

        import onnx  # noqa: PLC0415
        import torch  # noqa: PLC0415

        from ..intake import torch_args  # noqa: PLC0415

        params = dict(module.named_parameters())
        args = torch_args(ctx.calibration.head(2).feeds, ctx.model.inputs)
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "analysis.onnx"
            torch.onnx.export(module, args, str(f), input_names=[i.name for i in ctx.model.inputs],
                              dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                              do_constant_folding=False)
            g = onnx.load(str(f)).graph
        consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        outputs = {o.name for o in g.output}

        def attr(n, name, default):
            for a in n.attribute:
                if a.name == name:
                    return onnx.helper.get_attribute_value(a)
            return default

        def module_of(name: str) -> str | None:
            return name[: -len(".weight")] if name.endswith(".weight") and name in params else None

        groups = []
        for n in g.node:
            kind = None
            if n.op_type == "Conv" and attr(n, "group", 1) == 1 and len(n.input) > 1:
                kind = "conv"
            elif n.op_type == "Gemm" and attr(n, "transB", 0) == 1 and len(n.input) > 1:
                kind = "linear"
            if kind is None or n.name in self.config.exclude_nodes:
                continue
            prod = module_of(n.input[1])
            if prod is None:
                continue
            channels = params[n.input[1]].shape[0]
            t = n.output[0]
            bn = None
            flatten = False
            consumer = None
            factor = 1
            while True:
                if t in outputs:
                    break
                cons = consumers.get(t, [])
                if len(cons) != 1:
                    break
                c = cons[0]
                if c.op_type == "BatchNormalization" and bn is None and not flatten:
                    bn = module_of(c.input[1])
                    if bn is None:
                        break
                    t = c.output[0]
                elif c.op_type in PER_CHANNEL_OPS or c.op_type == "GlobalAveragePool":
                    t = c.output[0]
                elif c.op_type == "Flatten" and kind == "conv" and attr(c, "axis", 1) == 1 and not flatten:
                    flatten = True
                    t = c.output[0]
                elif c.op_type == "Conv" and not flatten and kind == "conv" and attr(c, "group", 1) == 1 \
                        and c.input[0] == t and len(c.input) > 1 and module_of(c.input[1]):
                    consumer = module_of(c.input[1])
                    break
                elif c.op_type == "Gemm" and attr(c, "transB", 0) == 1 and c.input[0] == t \
                        and (flatten or kind == "linear") and module_of(c.input[1]):
                    consumer = module_of(c.input[1])
                    in_features = params[c.input[1]].shape[1]
                    if in_features % channels:
                        consumer = None
                    else:
                        factor = in_features // channels
                    break
                else:
                    break
            if consumer is not None and channels > 1:
                groups.append({"producer": prod, "consumer": consumer, "bn": bn, "channels": channels,
                               "factor": factor, "kind": kind})
        return groups


def slice_channels(module, groups: list[dict[str, Any]], sparsity: float) -> tuple[list[str], dict[str, Any]]:
    """Remove the share `sparsity` of each group's channels (smallest L1 norm, scaled by |gamma| of a
    following BatchNorm) from the producer, its BatchNorm and the consumer's input, in place.
    Returns what was cut ('features.0 32->16') and the kept channel indices of each producer and
    BatchNorm (sorted, into the original channels)."""
    import torch  # noqa: PLC0415

    descs: list[str] = []
    kept: dict[str, Any] = {}
    with torch.no_grad():
        for g in groups:
            c = g["channels"]
            keep_n = _keep_count(c, sparsity)
            if keep_n >= c:
                continue
            w = _get(module, g["producer"] + ".weight")
            score = w.detach().abs().reshape(w.shape[0], -1).sum(1)
            if g.get("bn"):
                gamma = _get(module, g["bn"] + ".weight").detach().abs()
                score = score * gamma / (score.mean() + 1e-12)
            idx = torch.sort(torch.topk(score, keep_n).indices).values
            _slice_param(module, g["producer"] + ".weight", 0, idx)
            _slice_param(module, g["producer"] + ".bias", 0, idx, optional=True)
            kept[g["producer"]] = idx
            if g.get("bn"):
                kept[g["bn"]] = idx
                for p in ("weight", "bias", "running_mean", "running_var"):
                    _slice_param(module, f"{g['bn']}.{p}", 0, idx, optional=True)
            factor = g.get("factor", 1)
            cidx = (idx[:, None] * factor + torch.arange(factor)[None, :]).reshape(-1) if factor > 1 else idx
            _slice_param(module, g["consumer"] + ".weight", 1, cidx)
            descs.append(f"{g['producer']} {c}->{keep_n}")
    return descs, kept


def _invalid(msg: str):
    from ..errors import InvalidInput  # noqa: PLC0415

    return InvalidInput("pass:prune", msg)


def _keep_count(channels: int, sparsity: float) -> int:
    target = channels * (1 - sparsity)
    if channels >= 32:
        return int(min(channels, max(16, round(target / 16) * 16)))
    return int(max(1, round(target)))


def _param_count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _get(module, dotted: str):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _slice_param(module, dotted: str, dim: int, idx, optional: bool = False) -> None:
    import torch  # noqa: PLC0415

    owner_name, _, attr_name = dotted.rpartition(".")
    owner = _get(module, owner_name) if owner_name else module
    cur = getattr(owner, attr_name, None)
    if cur is None:
        if optional:
            return
        raise _invalid(f"parameter {dotted} not found")
    new = cur.detach().index_select(dim, idx).clone()
    if isinstance(cur, torch.nn.Parameter):
        setattr(owner, attr_name, torch.nn.Parameter(new, requires_grad=cur.requires_grad))
    else:
        setattr(owner, attr_name, new)


def fine_tune_data(ctx: PassContext):
    """(data set, where it comes from) for fine-tuning: spec.data.training when given, else the
    calibration set; never the validation set (without spec.data.calibration the calibration set IS
    the validation set: then (None, why not))."""
    if ctx.training is not None:
        return ctx.training, "training set"
    if ctx.calibration_is_validation:
        return None, ("structured pruning not fine-tuned: no spec.data.training, and without "
                      "spec.data.calibration the only data is the validation set, which fine-tuning would train "
                      "on (inflating the accuracy the gate reports)")
    return ctx.calibration, "calibration set (no spec.data.training)"


def _fine_tune(module, ctx: PassContext, cal, source: str, teacher, ft: FineTune) -> str:
    """Low learning rate, few epochs, early stop when held-out accuracy falls; returns a short note.
    Trains on 80% of `cal` (the training set, or the calibration set without one), scores the rest."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from ..intake import torch_args  # noqa: PLC0415

    n = len(cal)
    labels = cal.labels
    use_labels = (str(ctx.spec.task.type) == "classification" and labels is not None and labels.ndim == 1
                  and teacher.ndim == 2)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    n_hold = max(1, n // 5)
    hold, train = order[:n_hold], order[n_hold:]
    if len(train) == 0:
        return f"no fine-tune (too few samples in the {source})"
    inputs = ctx.model.inputs
    teacher_t = torch.from_numpy(np.asarray(teacher))
    labels_t = torch.from_numpy(labels.astype(np.int64)) if use_labels else None

    def score() -> float:
        module.eval()
        with torch.no_grad():
            out = module(*torch_args(cal.take(hold).feeds, inputs))
            out = out[0] if isinstance(out, (tuple, list)) else out
            if use_labels:
                return float((out.argmax(1) == labels_t[hold]).float().mean())
            return -float(torch.mean((out - teacher_t[hold]) ** 2))

    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=ft.learning_rate)
    best = score()
    start = best
    best_state = copy.deepcopy(module.state_dict())
    epochs_run = 0
    batch = 32
    for epoch in range(ft.epochs):
        module.train()
        perm = rng.permutation(train)
        for i in range(0, len(perm), batch):
            b = perm[i:i + batch]
            opt.zero_grad()
            out = module(*torch_args(cal.take(b).feeds, inputs))
            out = out[0] if isinstance(out, (tuple, list)) else out
            if use_labels:
                loss = torch.nn.functional.cross_entropy(out, labels_t[b])
            else:
                loss = torch.nn.functional.mse_loss(out, teacher_t[b])
            loss.backward()
            opt.step()
        epochs_run = epoch + 1
        s = score()
        ctx.report("fine-tune", (epoch + 1) / ft.epochs, f"epoch {epoch + 1}: held-out {'top-1' if use_labels else '-mse'} {s:.4f}")
        if s >= best:
            best = s
            best_state = copy.deepcopy(module.state_dict())
        elif best - s > ft.early_stop_drop:
            break
    module.load_state_dict(best_state)
    module.eval()
    what = "top-1" if use_labels else "-mse"
    return f"fine-tuned {epochs_run} ep on the {source.split(' (')[0]}, held-out {what} {start:.3f}->{best:.3f}"
