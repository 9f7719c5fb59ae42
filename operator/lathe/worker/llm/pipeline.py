"""The worker pipeline of task causal-lm: intake (checkpoint, FP32 export, its verification) -> text data and
coverage -> baseline -> candidates (weight-only passes, load + generate, perplexity, agreement) -> benchmark ->
budget gate -> selection -> result.json, details.json, report.html.

It is the generic pipeline's sequence on other rooms: the budget gate (evaluate/budget.py), the interleaved-rounds
benchmark statistic (evaluate/benchmark.py), the selection (evaluate/select.py), the report and the result types
are the ones every task uses. What differs is what a model is (a folder the generation runtime loads), how it is
judged (perplexity and next-token agreement on token windows, not outputs on samples) and what is timed (first
token, decode, concurrent streams, not one call)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from ...api.spec import Candidate, ModelOptimizationSpec
from ...api.status import CandidateResult, Latency, Verdict, WorkerResult
from ...evaluate import budget as gate
from ...storage import sha256_file
from ..errors import InvalidInput, WorkerError
from ..locations import check_written
from ..passes import make_pass, validate_candidates
from ..passes.base import ModelState, PassContext
from ..progress import ProgressFn
from ..stages import Built, Stages, assemble
from . import export
from .checkpoint import prepare
from .text_data import Tokenizer, coverage, load_text, read_choices, read_prompts

log = logging.getLogger("lathe.worker.llm")

RUNTIME = "onnxruntime-genai"
CHECK_TOKENS = 8  # tokens every candidate generates before it is judged
DEFAULT_MAX_WINDOWS = 12  # validation windows scored unless spec.data.validation.maxSamples says


class LlmPipeline(Stages):
    """The causal-LM stages (the shared state, build loop and run() are Stages')."""

    # ------------------------------------------------------------------------------------------------ intake
    def load(self) -> None:
        from ..intake import fetch  # noqa: PLC0415

        spec = self.spec
        if self.metric != "perplexity":
            raise InvalidInput("spec", f"spec.task.metric: task causal-lm is measured by perplexity, not {self.metric}")
        self.progress("intake", 0.0, spec.model.uri)
        t0 = time.monotonic()
        self.ck = prepare(spec)
        self.warnings += self.ck.notes
        self.progress("intake", 0.4, f"{self.ck.architecture}, {self.ck.params / 1e6:.1f}M parameters"
                      + (f", converted in {self.ck.converted_seconds:.0f}s" if self.ck.converted_seconds else ""))
        self.fp32_dir, cached = export.build(self.ck.folder, self.ck.fingerprint)
        self.progress("intake", 0.7, "FP32 export " + ("from the build cache" if cached else "built"))
        self.tok = Tokenizer(self.fp32_dir)
        window = spec.task.window_tokens
        val_path = fetch(spec.data.validation.uri, spec.data.validation.sha256, "validation data")
        self.val = load_text(val_path, self.tok, window, "validation",
                             spec.data.validation.max_samples or DEFAULT_MAX_WINDOWS)
        if spec.data.calibration is not None:
            cal_path = fetch(spec.data.calibration.uri, spec.data.calibration.sha256, "calibration data")
            self.cal = load_text(cal_path, self.tok, window, "calibration", spec.data.calibration.max_samples)
        else:
            self.cal = self.val
        self.coverage = coverage(self.cal, self.val, self.tok, same_set=spec.data.calibration is None)
        self.warnings += self.coverage.warnings
        if spec.data.prompts is not None:
            self.prompts = read_prompts(fetch(spec.data.prompts.uri, spec.data.prompts.sha256, "prompts"))
        else:
            self.prompts = [self.tok.decode(self.val.windows[0][:32])]
        self.choices = None
        if spec.data.multiple_choice is not None:
            self.choices = read_choices(fetch(spec.data.multiple_choice.uri, spec.data.multiple_choice.sha256,
                                              "multiple-choice data"))
        self.details["intake"] = {"checkpoint": str(self.ck.folder), "format": self.ck.format,
                                  "architecture": self.ck.architecture, "parameters": self.ck.params,
                                  "fp32_export_cached": cached, "seconds": round(time.monotonic() - t0, 1),
                                  "converted_seconds": self.ck.converted_seconds}
        self.progress("intake", 0.8, "verifying the export against transformers")
        self.details["export_verification"] = export.verify_cached(self.ck.folder, self.fp32_dir, self.tok,
                                                                           self.threads)
        self.progress("intake", 1.0, f"{len(self.val)} validation windows of {window} tokens "
                                     f"({self.val.scored_tokens} scored), {self.cal.total_tokens} calibration tokens")

    def candidates(self) -> list[Candidate]:
        problems = validate_candidates(self.spec)
        if problems:
            raise InvalidInput("spec", "; ".join(problems))
        if self.spec.candidates:
            return list(self.spec.candidates)
        from .candidates import default_candidates  # noqa: PLC0415

        return default_candidates(self.spec)

    # ------------------------------------------------------------------------------------------------ judge
    def _judge(self, folder: Path, res: CandidateResult) -> Any:
        """Load with the generation runtime and generate (a model that cannot is failed, never judged), then
        score every validation window: perplexity, agreement with the FP32 model, multiple choice."""
        from .generate import Generator  # noqa: PLC0415
        from .metrics import Scorer, multiple_choice_accuracy  # noqa: PLC0415

        gen = Generator(folder, self.threads)
        prompt = self.tok.encode(self.prompts[0])
        out = gen.greedy(prompt, CHECK_TOKENS)
        if not out:
            raise WorkerError("generate", "generated no token")
        scorer = Scorer(folder, self.threads)
        scores = scorer.windows(self.val.windows)
        res.perplexity = round(scores.perplexity, 5)
        res.accuracy = res.perplexity
        res.metric = self.metric
        if res.name == "baseline":
            self.ref = scores
            res.accuracy_drop, res.relative_drop, res.perplexity_increase, res.token_agreement = 0.0, 0.0, 0.0, 1.0
        else:
            base = self.base.perplexity
            res.accuracy_drop = round(res.perplexity - base, 5)
            res.relative_drop = res.perplexity_increase = round(res.perplexity / base - 1, 6)
            res.token_agreement = round(scores.agreement(self.ref), 5)
        if self.choices:
            res.choice_accuracy = round(multiple_choice_accuracy(scorer, self.tok, self.choices), 5)
        return gen, {"generated": self.tok.decode(out), "prompt": self.prompts[0][:200]}

    def baseline(self) -> Built:
        self.progress("baseline", 0.0)
        res = CandidateResult(name="baseline", runtime=RUNTIME, passes="fp32 (model builder)", verdict=Verdict.baseline,
                              reason="reference: the FP32 export of the checkpoint on onnxruntime-genai")
        self.base = res
        try:
            gen, sample = self._judge(self.fp32_dir, res)
        except WorkerError as e:
            raise InvalidInput("baseline", f"the FP32 model itself cannot generate: {e.message}") from e
        if not (res.perplexity and res.perplexity == res.perplexity and res.perplexity < float("inf")):
            raise InvalidInput("baseline", f"the FP32 model's perplexity is {res.perplexity}: NaN/Inf logits")
        res.size_bytes = export.folder_bytes(self.fp32_dir)
        res.size_ratio = 1.0
        res.artifact, res.sha256 = str(self.fp32_dir), sha256_file(self.fp32_dir / "model.onnx")
        res.bits = _graph_bits(self.fp32_dir)
        self.details["baseline"] = sample
        self.progress("baseline", 1.0, f"perplexity {res.perplexity:.3f} over {self.val.scored_tokens} tokens")
        return Built(res, self.fp32_dir, gen)

    def build(self, cand: Candidate) -> Built:
        res = CandidateResult(name=cand.name, runtime=str(cand.runtime or RUNTIME), metric=self.metric)
        if res.runtime != RUNTIME:
            res.reason = f"runtime {res.runtime} does not serve task causal-lm (use {RUNTIME})"
            return Built(res)
        work = self.fresh_workdir(cand.name)
        ctx = PassContext(workdir=work, spec=self.spec, model=self.ck, calibration=self.cal, validation=self.val,
                          coverage=self.coverage, threads=self.threads, progress=self.progress, candidate=cand.name,
                          calibration_is_validation=self.cal is self.val)
        state = ModelState(onnx_path=self.fp32_dir / "model.onnx")
        descriptions = []
        for j, p in enumerate(cand.passes):
            ps = make_pass(p, RUNTIME)
            ctx.report(f"pass {j} {p.type}", 0.0, ps.describe())
            try:
                state = ps.run(state, ctx)
            except WorkerError:
                raise
            except Exception as e:
                raise WorkerError(f"pass:{p.type}", f"{ps.describe()} failed: {type(e).__name__}: "
                                                   f"{str(e).splitlines()[0][:300] if str(e) else ''}") from e
            descriptions.append(ps.describe())
        folder = Path(state.onnx_path).parent  # no pass: the FP32 build itself
        res.passes = " > ".join(descriptions) or "fp32 (model builder)"
        details: dict[str, Any] = {}
        if "sensitivity" in state.info:
            details["sensitivity"] = [(n, round(s, 6)) for n, s in state.info["sensitivity"]]
        details["bits"] = state.info.get("bits") or {}
        res.float_nodes = list(state.float_nodes)
        shutil.rmtree(work, ignore_errors=True)
        return self.judge(folder, res, details)

    def judge(self, folder: Path, res: CandidateResult, details: dict[str, Any] | None = None) -> Built:
        """A built model folder judged like every candidate: size, bits, then loaded, generating, scored. One that
        the runtime refuses or that cannot generate is `failed` with the runtime's words, never a crash (the bench
        judges the peers' folders the same way)."""
        details = dict(details or {})
        bits = details.get("bits") or {}
        res.bits = _bit_counts(bits) if bits else _graph_bits(folder)
        res.size_bytes = export.folder_bytes(folder)
        res.size_ratio = res.size_bytes / self.base.size_bytes if self.base.size_bytes else None
        res.artifact, res.sha256 = str(folder), sha256_file(folder / "model.onnx")
        try:
            gen, sample = self._judge(folder, res)
        except WorkerError as e:
            res.verdict = Verdict.failed
            res.reason = f"{e.stage}: {e.message}"
            return Built(res, folder, None, details)
        except Exception as e:  # ONNX Runtime refusing a graph at run time (a kernel's type check)
            res.verdict = Verdict.failed
            res.reason = f"run: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            return Built(res, folder, None, details)
        details.update(sample)
        res.verdict = Verdict.passed  # provisional: the gate decides after the benchmark
        return Built(res, folder, gen, details)

    # ------------------------------------------------------------------------------------------------ run
    def prepare(self, profile: bool = True) -> Built:
        """The candidate list, intake, text data, the effective budget and the baseline (`profile`: the generic
        pipeline's production-capture profile, which causal LMs do not have)."""
        check_written(self.spec)  # where the version and the reports go, before any work
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.all_candidates = self.candidates()
        self.load()
        self.budget, notes = gate.effective_budget(self.spec.budget, self.metric, str(self.spec.objective))
        self.warnings += notes
        return self.baseline()

    def build_one(self, cand: Candidate) -> Built:
        """One candidate built and judged; whatever goes wrong fails that candidate alone."""
        try:
            b = self.build(cand)
        except WorkerError as e:
            b = Built(CandidateResult(name=cand.name, runtime=RUNTIME, verdict=Verdict.failed, metric=self.metric,
                                      reason=f"{e.stage}: {e.message}"))
            log.warning("candidate %s failed: %s", cand.name, e)
            if isinstance(e, InvalidInput) and e.stage == "spec":
                raise
        except Exception as e:  # one broken candidate must not sink the others
            log.error("candidate %s crashed:\n%s", cand.name, traceback.format_exc())
            b = Built(CandidateResult(name=cand.name, runtime=RUNTIME, verdict=Verdict.failed, metric=self.metric,
                                      reason=f"crash: {type(e).__name__}: {str(e)[:200]}"))
        self.details["candidates"][cand.name] = b.details
        return b

    def for_handover(self, b: Built) -> Built:
        """`b` with its model folder as an Artifact under workdir/candidates/<name>/model: a candidate without
        passes is the FP32 build, which lives in the build cache, and is copied there."""
        from ..backends.base import Artifact  # noqa: PLC0415

        if not b.artifact:
            return b
        folder, cdir = Path(b.artifact), self.workdir / "candidates" / b.result.name
        if not folder.is_relative_to(cdir):
            shutil.copytree(folder, cdir / "model", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(*export.NOT_MODEL_FILES))
            folder = cdir / "model"
            b.result.artifact = str(folder)
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.name not in export.NOT_MODEL_FILES)
        files.sort(key=lambda f: f.name != "model.onnx")  # the main file first
        return Built(b.result, Artifact(runtime=RUNTIME, files=files), b.runner, b.details)

    def reload(self, runtime: str, art) -> Any:
        """A handed-over candidate's runner (worker/shard_run.py's benchmark Job): the generation runtime on its
        model folder."""
        from .generate import Generator  # noqa: PLC0415

        return Generator(Path(art.files[0]).parent, self.threads)

    def finish(self, base: Built, built: list[Built], t0: float) -> WorkerResult:
        """The interleaved benchmark of the baseline and every judged candidate, the budget gate, the selection
        and the reports."""
        self._benchmark(base, built)
        for b in built:
            self._verdict(b)
        wr = assemble(self, base, built, t0)
        self._write(wr)
        return wr

    def _benchmark(self, base: Built, built: list[Built]) -> None:
        from .bench import measure  # noqa: PLC0415

        gens = {"baseline": base.runner}
        gens.update({b.result.name: b.runner for b in built if b.runner is not None
                     and b.result.verdict != Verdict.failed})
        prompt_ids = self.val.windows.reshape(-1).tolist()
        m = measure(gens, prompt_ids, self.spec.target, str(self.spec.objective), rounds=self.bench_rounds,
                    seconds=self.bench_seconds, progress=self.progress)
        self.speedup_basis = m.basis
        self.details["benchmark"] = m.details
        for b in [base, *built]:
            c = b.result
            r = m.results.get(c.name)
            if r is None:
                continue
            c.first_token_ms = r.first_token_ms
            c.decode_tokens_per_s = r.decode_tps
            c.decode_tokens_per_s_low, c.decode_tokens_per_s_high = r.decode_tps_low, r.decode_tps_high
            c.stream_tokens_per_s, c.streams = r.stream_tps, r.streams
            c.latency = [Latency(batch=1, p50_ms=round(1000.0 / r.decode_tps, 5), throughput=round(r.decode_tps, 2),
                                 samples=r.decode_samples)] if r.decode_tps else []
            c.p50_ms = c.latency[0].p50_ms if c.latency else None
            if r.speedup is not None:
                c.speedup, c.speedup_low, c.speedup_high = r.speedup, r.speedup_low, r.speedup_high
            c.peak_memory_mb = r.peak_memory_mb

    def _verdict(self, b: Built) -> None:
        c = b.result
        if c.verdict == Verdict.failed:
            return
        fails = (gate.accuracy_failures(c, self.base, self.metric, self.budget) + gate.token_failures(c, self.budget)
                 + gate.performance_failures(c, self.budget))
        if fails:
            c.verdict, c.reason = Verdict.rejected, "; ".join(fails)
        else:
            c.verdict, c.reason = Verdict.passed, gate.passed_reason(c, self.metric, self.budget)

    def environment(self) -> dict[str, str]:
        import numpy as np  # noqa: PLC0415
        import onnxruntime  # noqa: PLC0415

        env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": str(os.cpu_count()),
               "threads": str(self.threads), "numpy": np.__version__, "family": "causal-lm",
               "onnxruntime": onnxruntime.__version__, "onnxruntime-genai": export.builder_version(),
               "architecture": self.ck.architecture, "parameters": str(self.ck.params)}
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    env["cpu"] = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return env

    def _write(self, wr: WorkerResult) -> None:
        from ...evaluate.report import html_report  # noqa: PLC0415

        self.progress("report", 0.0)
        (self.workdir / "result.json").write_text(wr.model_dump_json(by_alias=True, indent=2))
        cov = self.coverage
        self.details["coverage"] = {"calibration_tokens": cov.calibration_tokens,
                                    "validation_tokens": cov.validation_tokens,
                                    "calibration_windows": cov.calibration_windows,
                                    "validation_windows": cov.validation_windows,
                                    "document_tokens": cov.document_tokens, "unknown_share": cov.unknown_share,
                                    "unseen_share": cov.unseen_share, "warnings": cov.warnings}
        (self.workdir / "details.json").write_text(json.dumps(self.details, indent=2, default=str))
        (self.workdir / "report.html").write_text(html_report(wr, self.spec, self.budget, self.details))
        self.progress("report", 1.0, str(self.workdir / "report.html"))


def _graph_bits(folder: Path) -> dict[str, int]:
    """MatMul count per weight bit width, read from a graph (MatMulNBits' `bits`; a MatMul with a weight: 32;
    DequantizeLinear -> MatMul pairs: the bits of the DequantizeLinear's integer type)."""
    import onnx  # noqa: PLC0415

    m = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    inits = {i.name: i.data_type for i in m.graph.initializer}
    dq = {n.output[0]: inits.get(n.input[0]) for n in m.graph.node if n.op_type == "DequantizeLinear"}
    width = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8}
    out: dict[str, int] = {}
    for n in m.graph.node:
        b = None
        if n.op_type == "MatMulNBits":
            b = next((a.i for a in n.attribute if a.name == "bits"), 4)
        elif n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits:
            b = 32
        elif n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in dq:
            b = width.get(dq[n.input[1]], 32)
        if b is not None:
            out[str(b)] = out.get(str(b), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _bit_counts(bits: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for b in bits.values():
        out[str(b)] = out.get(str(b), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def run(spec: ModelOptimizationSpec, workdir: Path, progress: ProgressFn | None = None, *,
        bench_seconds: float | None = None, bench_rounds: int | None = None) -> WorkerResult:
    return LlmPipeline(spec, workdir, progress, bench_seconds, bench_rounds).run()
