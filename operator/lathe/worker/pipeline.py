"""The worker pipeline: intake -> data checks -> baseline -> candidates (passes, build, validate,
mixed precision) -> benchmark -> budget gate -> selection -> result.json, report.html.

    result = run(spec, Path("/work"), progress=None)

Everything a candidate produces lives under workdir/candidates/<name>/ (the artifact is
model.onnx there; intermediate files under work/)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from ..api.spec import Candidate, ModelOptimizationSpec, TaskType, runtimes_of
from ..api.status import CandidateResult, Latency, TieBreak, Verdict, WorkerResult
from ..evaluate import budget as gate
from ..evaluate.batch_memory import oversized
from ..evaluate.benchmark import benchmark
from ..evaluate.memory import peak_added_mb
from ..evaluate.metrics import drop, finite, score
from ..evaluate.select import leaders
from ..evaluate.tiebreak import settle
from ..storage import sha256_file
from . import data as datamod
from .backends import get_backend, unavailable_reason
from .backends.emulated import CpuEmulation
from .errors import InvalidInput, WorkerError
from .fallback import ablation, steps
from .intake import ModelInfo, fetch, intake, load_torch
from .limits import memory_limit
from .locations import check_written
from .passes import ModelState, PassContext, default_candidates, make_pass, validate_candidates
from .progress import ProgressFn
from .stages import Built, Stages, assemble

log = logging.getLogger("lathe.worker")

REPORT_NODES = 400  # per-node precision kept for the report, per candidate
FALLBACK_PROBE = 32  # samples a mixed-precision step is tried on before the full validation set


def _round(v: float | None, nd: int = 5) -> float | None:
    return None if v is None else round(v, nd)


def _quantiles(samples: list[float]) -> dict[str, float]:
    """The latency distribution in the report: a box plot's worth of quantiles."""
    if not samples:
        return {}
    qs = {"min": 0, "p5": 5, "p25": 25, "p50": 50, "p75": 75, "p95": 95, "max": 100}
    vals = np.percentile(samples, list(qs.values()))
    return {k: round(float(v), 5) for k, v in zip(qs, vals, strict=True)}


def _eval_batch(info: ModelInfo) -> int:
    d0 = info.inputs[0].shape[0] if info.inputs and info.inputs[0].shape else None
    return d0 if isinstance(d0, int) and d0 > 0 else 32


def gpu_architecture() -> str | None:
    """The compute capability engines are built for: the operator's LATHE_GPU_ARCH (one Job per architecture),
    else the visible GPU's, else None (no GPU here: every GPU default is kept and judged on the CPU)."""
    return os.environ.get("LATHE_GPU_ARCH") or visible_gpu_architecture()


def visible_gpu_architecture() -> str | None:
    """The compute capability of the GPU torch sees ("9.0"), None without one."""
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}"
    except Exception as e:  # no CUDA build of torch, no driver: not an error on a CPU worker
        log.debug("no GPU architecture: %s", e)
    return None


def infer(runner, ds: datamod.Dataset, batch: int) -> list[np.ndarray]:
    outs: list[list[np.ndarray]] = []
    for feeds in ds.batches(batch):
        outs.append([np.asarray(o) for o in runner(feeds)])
    return [np.concatenate([b[k] for b in outs]) for k in range(len(outs[0]))]


class Pipeline(Stages):
    def __init__(self, spec: ModelOptimizationSpec, workdir: Path, progress: ProgressFn | None = None,
                 bench_seconds: float | None = None, bench_rounds: int | None = None):
        super().__init__(spec, workdir, progress, bench_seconds, bench_rounds)
        self.tie_break: TieBreak | None = None

    # ------------------------------------------------------------------ stages
    def load(self) -> None:
        spec = self.spec
        self.progress("intake", 0.0, spec.model.uri)
        val_path = fetch(spec.data.validation.uri, spec.data.validation.sha256, "validation data")
        cal_path = (fetch(spec.data.calibration.uri, spec.data.calibration.sha256, "calibration data")
                    if spec.data.calibration else None)
        val_arrays = datamod.read_npz(val_path, "validation")
        self.info, self.module = intake(spec, self.workdir, val_arrays, val_path)
        self.val = datamod.load(val_path, self.info.inputs, "validation", spec.data.validation.max_samples,
                                arrays=val_arrays)
        if cal_path is not None:
            self.cal = datamod.load(cal_path, self.info.inputs, "calibration", spec.data.calibration.max_samples)
        else:
            self.cal = self.val
        self.coverage = datamod.coverage(self.cal, self.val, spec.data.coverage, same_set=cal_path is None)
        self.cal_is_val = cal_path is None
        self.train = None
        if spec.data.training is not None:
            train_path = fetch(spec.data.training.uri, spec.data.training.sha256, "training data")
            self.train = datamod.load(train_path, self.info.inputs, "training", spec.data.training.max_samples)
            shared = datamod.shared_samples(self.train, self.val)
            if shared:
                self.warnings.append(f"{shared} of {len(self.val)} validation samples are also in the training set "
                                     "(spec.data.training): candidates trained on it are measured on data they "
                                     "have seen, so their accuracy is optimistic")
        self.out_index = 0
        if spec.task.output:
            if spec.task.output not in self.info.outputs:
                raise InvalidInput("intake", f"spec.task.output '{spec.task.output}' is not a model output "
                                             f"{self.info.outputs}")
            self.out_index = self.info.outputs.index(spec.task.output)
        self._check_batch_memory()
        self.progress("intake", 1.0, f"{self.info.family} model, {len(self.val)} validation / "
                                     f"{len(self.cal)} calibration samples"
                                     + (f" / {len(self.train)} training samples" if self.train is not None else ""))

    def _check_batch_memory(self) -> None:
        """Before any benchmark: a batch size whose inputs alone (the real arrays' sizes, dynamic dimensions
        included) exceed this worker's memory limit is refused instead of being killed for memory."""
        limit = memory_limit()
        if not limit:
            return
        per_sample = sum(int(a[0].nbytes) for a in self.val.feeds.values())
        shapes = ", ".join(f"{k} {list(a.shape[1:])} {a.dtype}" for k, a in self.val.feeds.items())
        why = oversized(self.spec.target.batch_sizes, per_sample, limit, f"validation data: {shapes}")
        if why:
            raise InvalidInput("data", f"spec.target.batchSizes: {why}")

    def candidates(self) -> list[Candidate]:
        problems = validate_candidates(self.spec)
        if problems:
            raise InvalidInput("spec", "; ".join(problems))
        if self.spec.candidates:
            return list(self.spec.candidates)
        cands = []
        for rt in runtimes_of(self.spec):
            cands += default_candidates(self.spec, self.info.family, str(rt), gpu_architecture())
        return cands

    def baseline(self) -> Built:
        self.progress("baseline", 0.0)
        backend = get_backend("onnxruntime")
        art = backend.build(self.info.onnx_path, self.workdir / "baseline", {})
        runner = backend.load(art, self.threads)
        self.batch = _eval_batch(self.info)
        outs = infer(runner, self.val, self.batch)
        if not finite(outs):
            raise InvalidInput("baseline", f"the model itself outputs NaN/Inf on the validation data ({self.info.source})")
        self._check_labels(outs[self.out_index])
        self.base_out = outs
        s = score(outs[self.out_index], outs[self.out_index], self.val.labels, self.metric)
        res = CandidateResult(name="baseline", runtime="onnxruntime", passes="fp32", verdict=Verdict.baseline,
                              reason="reference: the unmodified model on ONNX Runtime", metric=self.metric,
                              accuracy=s["value"], accuracy_drop=0.0, relative_drop=0.0, min_cosine=1.0,
                              size_bytes=art.size_bytes(), size_ratio=1.0,
                              artifact=str(art.path), sha256=sha256_file(art.path))
        try:
            from .backends.onnxruntime import precision_counts  # noqa: PLC0415

            res.precision = precision_counts(backend.precision(art))
        except Exception as e:  # precision audit is informative only
            log.warning("precision audit of baseline failed: %s", e)
        self.base = res
        probe = self.val.head(FALLBACK_PROBE)
        ps = score(outs[self.out_index][:len(probe)], outs[self.out_index][:len(probe)], probe.labels, self.metric)
        self.base_probe = CandidateResult(name="baseline", metric=self.metric, accuracy=ps["value"])
        self.progress("baseline", 1.0, f"{self.metric} {s['value']:.4f}")
        return Built(res, art, runner)

    def _check_labels(self, out: np.ndarray) -> None:
        """Class labels the model cannot produce (its output has `classes` columns) are bad data, in every set."""
        if out.ndim != 2 or out.shape[1] < 2 or (self.metric != "top1"
                                                 and self.spec.task.type != TaskType.classification):
            return
        sets = [self.val] + [d for d in (self.cal, self.train) if d is not None and d is not self.val]
        for ds in sets:
            datamod.check_labels(ds, int(out.shape[1]))

    def _apply_passes(self, cand: Candidate, ctx: PassContext, float_nodes: list[str],
                      start: ModelState | None = None, from_index: int = 0) -> ModelState:
        state = start or ModelState(onnx_path=self.info.onnx_path)
        state.float_nodes = list(float_nodes)
        if from_index == 0 and self.info.torch_source and any(
                (p.type == "prune" and p.method == "structured") or (p.type == "quantize" and p.mode == "qat")
                or p.type == "distill" for p in cand.passes):
            state.torch_module = load_torch(self.info.source, self.info.format)
        for j, p in enumerate(cand.passes[from_index:], start=from_index):
            ps = make_pass(p, str(cand.runtime or runtimes_of(self.spec)[0]))
            if p.type == "quantize":
                state.info["quantize_index"] = j
                state.info["before_quantize"] = state.onnx_path
            ctx.report(f"pass {j} {p.type}", 0.0, ps.describe())
            try:
                state = ps.run(state, ctx)
            except WorkerError:
                raise
            except Exception as e:
                raise WorkerError(f"pass:{p.type}", f"{ps.describe()} failed: {type(e).__name__}: {e}") from e
            state.info.setdefault("descriptions", []).append(ps.describe())
        return state

    def _validate(self, runner, res: CandidateResult, val: datamod.Dataset | None = None,
                  base: CandidateResult | None = None) -> list[str]:
        """Accuracy of a candidate on the validation set (or a probe subset with its own baseline)."""
        val = val or self.val
        base_res = base or self.base
        outs = infer(runner, val, self.batch)
        if not finite(outs):
            bad = [self.info.outputs[k] for k, o in enumerate(outs) if o.dtype.kind == "f" and not np.isfinite(o).all()]
            res.verdict = Verdict.failed
            res.reason = f"outputs {bad} contain NaN/Inf"
            return [res.reason]
        base = self.base_out[self.out_index][: len(val)]
        s = score(outs[self.out_index], base, val.labels, self.metric)
        res.metric = self.metric
        res.accuracy = s["value"]
        res.min_cosine = s["min_cosine"]
        res.accuracy_drop, res.relative_drop = drop(base_res.accuracy, s["value"], self.metric)
        return gate.accuracy_failures(res, base_res, self.metric, self.budget)

    def build(self, cand: Candidate) -> Built:
        runtime = str(cand.runtime or runtimes_of(self.spec)[0])
        res = CandidateResult(name=cand.name, runtime=runtime, metric=self.metric)
        work = self.fresh_workdir(cand.name)
        cdir = work.parent
        ctx = PassContext(workdir=work, spec=self.spec, model=self.info, calibration=self.cal, validation=self.val,
                          coverage=self.coverage, threads=self.threads, progress=self.progress, candidate=cand.name,
                          training=self.train, calibration_is_validation=self.cal_is_val)
        details: dict[str, Any] = {}
        backend = get_backend(runtime)
        # tensorrt's graph is made and judged on the CPU first, whether or not this worker can build engines
        if runtime != "tensorrt" and (backend is None or backend.available()):
            res.verdict = Verdict.failed
            res.reason = unavailable_reason(runtime)
            return Built(res)
        state = self._apply_passes(cand, ctx, [])
        res.passes = " > ".join(state.info.get("descriptions", [])) or "plain build"
        if state.notes:
            res.passes += " [" + "; ".join(state.notes) + "]"
        res.warnings = list(state.warnings)
        res.out_of_range = state.out_of_range
        if "training" in state.info:  # quantization-aware training: every epoch's held-out figure
            details["training"] = state.info["training"]
        if "distillation" in state.info:  # the student and every epoch's held-out figure
            details["distillation"] = state.info["distillation"]
        if "fine_tune_data" in state.info:
            details["fine_tune_data"] = state.info["fine_tune_data"]
        if state.activation_coverage:
            worst = next(iter(state.activation_coverage))
            res.activation_out_of_range = round(state.activation_coverage[worst], 6)
            res.activation_out_of_range_tensor = worst
            details["activation_coverage"] = {t: round(v, 6) for t, v in state.activation_coverage.items()}
        if runtime == "tensorrt":
            return self._tensorrt(cand, ctx, state, res, details, cdir, work)
        art = backend.build(state.onnx_path, cdir, backend.build_options(ctx, state) if hasattr(backend, "build_options") else {})
        runner = backend.load(art, self.threads)
        res.verdict = Verdict.passed  # provisional: the budget gate decides after the benchmark
        failures = self._validate(runner, res)
        if res.verdict == Verdict.failed:
            return Built(res, art, None, details)
        fb = cand.fallback
        if failures and state.quantized and fb is not None and fb.enabled and fb.max_float_nodes > 0:
            art, runner, failures = self._mixed_precision(cand, ctx, state, backend, cdir, res, failures, details)
        res.size_bytes = art.size_bytes()
        res.size_ratio = res.size_bytes / self.base.size_bytes if self.base.size_bytes else None
        try:
            if hasattr(backend, "precision"):
                from collections import Counter  # noqa: PLC0415

                per_node = backend.precision(art)
                res.precision = dict(Counter(per_node.values()))
                details["precision_nodes"] = dict(list(per_node.items())[:REPORT_NODES])
        except Exception as e:
            log.warning("precision audit of %s failed: %s", cand.name, e)
        res.artifact = str(art.path)
        res.sha256 = sha256_file(art.path)
        details["accuracy_failures"] = failures
        shutil.rmtree(work, ignore_errors=True)
        return Built(res, art, runner, details)

    def _tensorrt(self, cand: Candidate, ctx: PassContext, state: ModelState, res: CandidateResult,
                  details: dict[str, Any], cdir: Path, work: Path) -> Built:
        """The candidate's graph judged on the CPU (emulated), then, where this worker has TensorRT and a GPU,
        built into an engine, audited per layer and validated on the engine itself."""
        emu = CpuEmulation()
        art = emu.build(state.onnx_path, cdir, {})
        runner = emu.load(art, self.threads)
        res.verdict = Verdict.passed
        res.accuracy_source = "emulated"
        failures = self._validate(runner, res)
        if res.verdict == Verdict.failed:
            res.reason = f"emulated on the CPU: {res.reason}"
            return Built(res, None, None, details)
        fb = cand.fallback
        if (failures and state.quantized and fb is not None and fb.enabled and fb.max_float_nodes > 0
                and hasattr(state.quantize_pass, "quantizable_nodes")
                and state.info.get("requested_precision") in ("INT8", "FP8")):
            art, runner, failures = self._mixed_precision(cand, ctx, state, emu, cdir, res, failures, details)
        graph = Path(art.meta["graph"])  # the graph the last emulation ran (with the search's float nodes)
        kept = cdir / "graph.onnx"  # what TensorRT builds (or would): kept beside the candidate's results
        shutil.copyfile(graph, kept)
        res.artifact, res.sha256, res.size_bytes = str(kept), sha256_file(kept), kept.stat().st_size
        res.size_ratio = res.size_bytes / self.base.size_bytes if self.base.size_bytes else None
        requested = str(state.info.get("requested_precision") or "FP32")
        details["emulation"] = {"graph": str(kept), "requested_precision": requested, **art.meta,
                                "accuracy": res.accuracy, "accuracy_drop": res.accuracy_drop,
                                "failures": failures}
        emulated = f"emulated on the CPU (ONNX Runtime, {requested} graph)"
        if failures:
            res.verdict = Verdict.rejected
            res.reason = f"{emulated}: " + "; ".join(failures) + ": no engine built"
            if res.float_nodes:
                res.reason += f" (with {len(res.float_nodes)} node(s) kept in float)"
            return Built(res, None, None, details)
        backend = get_backend("tensorrt")
        why = unavailable_reason("tensorrt") if backend is not None else "runtime tensorrt is not available"
        if backend is None or why:
            res.verdict = Verdict.failed
            res.reason = (f"{emulated}: {self.metric} drop {res.accuracy_drop:.4f} is within the budget; "
                          f"engine not built: {why}")
            shutil.rmtree(work, ignore_errors=True)
            return Built(res, None, None, details)
        # Never executed on this project's machines (no TensorRT, no GPU): the engine replaces the emulation.
        opts = {**backend.build_options(ctx, state), "requested_precision": requested}
        engine = backend.build(graph, cdir, opts)
        audit = backend.audit(engine, requested)
        details["precision_audit"] = {k: v for k, v in audit.items() if k != "layers"}
        res.precision = dict(audit.get("by_precision") or {})
        higher = list(audit.get("higher_than_requested") or [])
        if higher:
            res.warnings.append(f"{len(higher)} compute layer(s) run above {requested}: {', '.join(higher[:8])}")
        if audit.get("failure"):
            res.verdict = Verdict.rejected
            res.reason = str(audit["failure"])
            return Built(res, engine, None, details)
        runner = backend.load(engine, self.threads)
        res.accuracy_source = None
        failures = self._validate(runner, res)
        res.artifact, res.sha256, res.size_bytes = str(engine.path), sha256_file(engine.path), engine.size_bytes()
        res.size_ratio = res.size_bytes / self.base.size_bytes if self.base.size_bytes else None
        details["accuracy_failures"] = failures
        shutil.rmtree(work, ignore_errors=True)
        return Built(res, engine, runner, details)

    def _mixed_precision(self, cand, ctx, state, backend, cdir, res, failures, details):
        qpass = state.quantize_pass
        qi = state.info.get("quantize_index", 0)
        src = state.info.get("before_quantize", state.quantize_input)
        nodes = qpass.quantizable_nodes(src)
        ctx.report("mixed-precision", 0.0, f"ranking {len(nodes)} quantized nodes")
        ranked = (qpass.sensitivity(src, ctx, nodes, self.threads) if hasattr(qpass, "sensitivity")
                  else ablation(src, state.onnx_path, nodes, self.cal, self.threads,
                                output=self.info.outputs[self.out_index]))
        details["sensitivity"] = [(n, round(s, 6)) for n, s in ranked[:64]]
        art = runner = None
        tries = steps(cand.fallback.max_float_nodes, len(ranked))
        for t, k in enumerate(tries):
            keep = [n for n, _ in ranked[:k]]
            ctx.report("mixed-precision", t / len(tries), f"{k} node(s) in float")
            start = ModelState(onnx_path=src, quantized=False)
            st = self._apply_passes(cand, ctx, keep, start=start, from_index=qi)
            art = backend.build(st.onnx_path, cdir, backend.build_options(ctx, st) if hasattr(backend, "build_options") else {})
            runner = backend.load(art, self.threads)
            res.float_nodes = keep
            if len(self.val) > 2 * FALLBACK_PROBE and k != tries[-1]:
                probe = CandidateResult(name=res.name, metric=self.metric, verdict=Verdict.passed)
                if self._validate(runner, probe, self.val.head(FALLBACK_PROBE), self.base_probe):
                    continue  # clearly still out of budget on the first samples: next step
            failures = self._validate(runner, res)
            if res.verdict == Verdict.failed or not failures:
                break
        ctx.report("mixed-precision", 1.0, f"{len(res.float_nodes)} node(s) in float, "
                                           f"{'meets' if not failures else 'still breaks'} the accuracy budget")
        res.warnings.append(f"mixed precision kept {len(res.float_nodes)} node(s) in float"
                            + ("" if not failures else " and the accuracy budget still breaks"))
        return art, runner, failures

    # ------------------------------------------------------------------ the run, in stages
    # run() is prepare -> build_all -> finish in one process. A search split over Jobs
    # (spec.search.parallelism, worker/handover.py) runs prepare -> build_all on a share in each build
    # Job, and prepare -> (the shares read back) -> finish in the benchmark Job.
    def prepare(self, profile: bool = True) -> Built:
        """Intake, data checks, the candidate list, the effective budget and the baseline."""
        check_written(self.spec)  # where the version and the reports go, before any work
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.load()
        self.all_candidates = self.candidates()
        self.budget, notes = gate.effective_budget(self.spec.budget, self.metric, str(self.spec.objective))
        self.warnings += notes + self.coverage.warnings
        base = self.baseline()
        if profile:  # what a production capture is compared with: only the Job that publishes needs it
            self._calibration_profile(base)
        return base

    def build_one(self, cand: Candidate) -> Built:
        """One candidate built and validated; whatever goes wrong fails that candidate alone."""
        try:
            b = self.build(cand)
        except WorkerError as e:
            b = Built(CandidateResult(name=cand.name, runtime=str(cand.runtime or runtimes_of(self.spec)[0]),
                                      verdict=Verdict.failed, reason=f"{e.stage}: {e.message}", metric=self.metric))
            log.warning("candidate %s failed: %s", cand.name, e)
            if e.stage == "calibration":
                b.result.warnings.append(e.message)
        except Exception as e:  # one broken candidate must not sink the others
            log.error("candidate %s crashed:\n%s", cand.name, traceback.format_exc())
            b = Built(CandidateResult(name=cand.name, verdict=Verdict.failed, metric=self.metric,
                                      reason=f"crash: {type(e).__name__}: {str(e)[:200]}"))
        self.details["candidates"][cand.name] = b.details
        return b

    def reload(self, runtime: str, art):
        """A handed-over candidate's runner (worker/shard_run.py's benchmark Job)."""
        return get_backend(runtime).load(art, self.threads)

    def finish(self, base: Built, built: list[Built], t0: float) -> WorkerResult:
        """Interleaved benchmark of the baseline and every built candidate, the budget gate, the selection and
        the reports."""
        self._benchmark(base, built)
        for b in built:
            self._verdict(b)
        self._settle_ties(base, built)
        wr = assemble(self, base, built, t0, self.tie_break)
        self._write(wr)
        return wr

    def _benchmark(self, base: Built, built: list[Built]) -> None:
        runners = {"baseline": base.runner}
        engines: list[Built] = []
        for b in built:
            if b.runner is None or b.result.verdict == Verdict.failed:
                continue
            if b.result.runtime == "tensorrt":
                engines.append(b)  # timed on the GPU against an FP32 engine, not against the CPU baseline
            else:
                runners[b.result.name] = b.runner
        # said before the batches are built: a worker killed for memory here is read by the operator from this line
        self.progress("benchmark", 0.0, "batch sizes " + ", ".join(map(str, self.spec.target.batch_sizes)))
        feeds = {bs: self.val.batch_of(bs) for bs in self.spec.target.batch_sizes}
        bench = benchmark(runners, feeds, "baseline", rounds=self.bench_rounds, seconds=self.bench_seconds,
                          progress=self.progress)
        self._main_bench = (runners, feeds, bench)
        self._engine_bench = self._benchmark_engines(engines, feeds) if engines else {}
        self._record(base, built)
        largest = max(feeds)
        for b in [base, *built]:
            if b.result.name in bench or b.result.name in self._engine_bench:
                b.result.peak_memory_mb = self._peak_memory(b, feeds[largest])

    def _record(self, base: Built, built: list[Built]) -> None:
        """The benchmark's figures into the candidates' results and details (again after tie-break rounds)."""
        runners, feeds, main = self._main_bench
        bench = {**main, **self._engine_bench}
        by_throughput = str(self.spec.objective) == "throughput"
        first, largest = next(iter(feeds)), max(feeds)
        decisive = largest if by_throughput else first
        rounds = len(main["baseline"].timings[decisive].round_medians)
        extra = (f", plus {rounds - self.bench_rounds} more at batch {decisive} to settle a tie on speed"
                 if rounds > self.bench_rounds else "")
        self.speedup_basis = (
            (f"throughput at batch {largest}" if by_throughput else f"p50 latency at batch {first}")
            + f": geometric mean over {self.bench_rounds} interleaved rounds{extra} of the per-round ratio against "
              "the baseline, with its 95% interval"
            + (" (TensorRT engines: against an FP32 TensorRT engine of the unmodified model on this GPU, timed "
               "with CUDA events)" if self._engine_bench else ""))
        self.details["benchmark"] = {
            n: {"ratios": [round(x, 4) for x in r.ratios],
                "batches": {str(bs): {"round_medians_ms": [round(x, 5) for x in t.round_medians],
                                      "quantiles_ms": _quantiles(t.samples_ms), "samples": len(t.samples_ms)}
                            for bs, t in r.timings.items()}}
            for n, r in bench.items()}
        for b in [base, *built]:
            r = bench.get(b.result.name)
            if r is None:
                continue
            c = b.result
            c.latency = [Latency(batch=bs, p50_ms=round(t.p50, 5), p95_ms=_round(t.pct(95)),
                                 p99_ms=_round(t.pct(99)), throughput=round(t.throughput, 2),
                                 samples=len(t.samples_ms))
                         for bs, t in r.timings.items()]
            c.p50_ms = c.latency[0].p50_ms
            c.p99_ms = c.latency[0].p99_ms
            if r.latency is not None and b.result.name in main:
                bp = main["baseline"].timings[first].p50
                self.details["candidates"].setdefault(c.name, {})["p50_interval_ms"] = [
                    round(bp / r.latency.high, 5) if r.latency.high > 0 else None, round(bp / r.latency.low, 5)
                    if r.latency.low > 0 else None]
            ratio = r.throughput if by_throughput else r.latency
            if ratio is not None:
                c.speedup, c.speedup_low, c.speedup_high = (round(ratio.value, 4), round(ratio.low, 4),
                                                            round(ratio.high, 4))
                c.rounds = ratio.rounds

    def _settle_ties(self, base: Built, built: list[Built]) -> None:
        """A tie on speed timed further (evaluate/tiebreak.py) within spec.target.tieBreakSeconds."""
        if str(self.spec.objective) == "size":
            return  # size decides, not speed
        runners, feeds, main = self._main_bench
        results = [b.result for b in built]
        if any(c.name not in main for c in leaders(results)):
            return  # TensorRT engines are timed against their own reference engine, on the GPU
        budget = self.spec.target.tie_break_seconds
        batch = max(feeds) if str(self.spec.objective) == "throughput" else next(iter(feeds))

        def refresh() -> None:
            self._record(base, built)
            for b in built:
                self._verdict(b)

        self.tie_break = settle(results, main, runners, feeds, "baseline", batch, self.bench_rounds,
                                cell_seconds=self.bench_seconds / max(1, len(runners) * len(feeds) * self.bench_rounds),
                                budget_seconds=self.bench_seconds if budget is None else budget, refresh=refresh,
                                progress=self.progress)
        if self.tie_break is not None:
            self.details["tie_break"] = self.tie_break.model_dump(by_alias=True)

    def _benchmark_engines(self, engines: list[Built], feeds: dict) -> dict:
        """TensorRT engines in interleaved rounds with CUDA-event timers, against an FP32 engine of the unmodified
        graph built on the same GPU (the reference a GPU user replaces). Never executed here (no TensorRT, no
        GPU). The engines' speedups are ratios to that engine: the speedup basis says so."""
        backend = get_backend("tensorrt")
        ctx = PassContext(workdir=self.workdir / "candidates" / "tensorrt-fp32" / "work", spec=self.spec,
                          model=self.info, calibration=self.cal, validation=self.val)
        ref = backend.build(self.info.onnx_path, self.workdir / "candidates" / "tensorrt-fp32",
                            {**backend.build_options(ctx, None), "requested_precision": "FP32"})
        runners = {"tensorrt-fp32": backend.load(ref, self.threads)}
        timers = {"tensorrt-fp32": backend.event_timer(ref)}
        for b in engines:
            runners[b.result.name] = b.runner
            timers[b.result.name] = backend.event_timer(b.artifact)
        bench = benchmark(runners, feeds, "tensorrt-fp32", rounds=self.bench_rounds, seconds=self.bench_seconds,
                          progress=self.progress, timers=timers)
        bench.pop("tensorrt-fp32")
        return bench

    def _peak_memory(self, b: Built, feeds) -> float | None:
        """Loaded afresh so that the peak includes building the session, then run twice."""
        if b.artifact is None:
            return None
        backend = get_backend(b.result.runtime or "onnxruntime")

        def work():
            runner = backend.load(b.artifact, self.threads)
            for _ in range(2):
                runner(feeds)

        try:
            return peak_added_mb(work)
        except Exception as e:  # informative only: never sinks a candidate
            log.warning("peak memory of %s not measured: %s", b.result.name, e)
            return None

    def _verdict(self, b: Built) -> None:
        c = b.result
        if c.verdict == Verdict.failed or (c.verdict == Verdict.rejected and b.runner is None):
            return  # failed, or rejected before anything could be benchmarked (a tensorrt graph, emulated)
        fails = (gate.accuracy_failures(c, self.base, self.metric, self.budget) + gate.coverage_failures(c, self.budget)
                 + gate.performance_failures(c, self.budget))
        if fails:
            c.verdict = Verdict.rejected
            c.reason = "; ".join(fails)
            if c.float_nodes:
                c.reason += f" (with {len(c.float_nodes)} node(s) kept in float)"
        else:
            c.verdict = Verdict.passed
            c.reason = gate.passed_reason(c, self.metric, self.budget)

    def environment(self) -> dict[str, str]:
        env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": str(os.cpu_count()),
               "threads": str(self.threads), "numpy": np.__version__, "family": self.info.family}
        try:
            import onnxruntime  # noqa: PLC0415

            env["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            pass
        if self.info.torch_source:
            import torch  # noqa: PLC0415

            env["torch"] = torch.__version__
        return env

    def _calibration_profile(self, base: Built) -> None:
        """What a production capture is compared with (rollout/capture.py): published beside the version."""
        from ..rollout.capture import PROFILE_FILE, profile  # noqa: PLC0415

        answers = None
        if self.spec.task.type == TaskType.classification:
            answers = infer(base.runner, self.cal, _eval_batch(self.info))[self.out_index]
        (self.workdir / PROFILE_FILE).write_text(json.dumps(profile(self.cal.feeds, answers)))

    def _write(self, wr: WorkerResult) -> None:
        from ..evaluate.report import html_report  # noqa: PLC0415

        self.progress("report", 0.0)
        (self.workdir / "result.json").write_text(wr.model_dump_json(by_alias=True, indent=2))
        self.details["coverage"] = {"samples": self.coverage.samples, "out_of_range": self.coverage.out_of_range,
                                    "per_input": self.coverage.per_input, "warnings": self.coverage.warnings,
                                    "errors": self.coverage.errors}
        (self.workdir / "details.json").write_text(json.dumps(self.details, indent=2, default=str))
        (self.workdir / "report.html").write_text(html_report(wr, self.spec, self.budget, self.details))
        self.progress("report", 1.0, str(self.workdir / "report.html"))


def run(spec: ModelOptimizationSpec, workdir: Path, progress: ProgressFn | None = None, *,
        bench_seconds: float | None = None, bench_rounds: int | None = None) -> WorkerResult:
    """Run the whole worker on a model of any task but causal-lm (worker/tasks.py picks); writes result.json,
    details.json, report.html and the candidates' artifacts under `workdir`. Raises InvalidInput for bad
    model/data/spec, WorkerError otherwise."""
    return Pipeline(spec, workdir, progress, bench_seconds, bench_rounds).run()
