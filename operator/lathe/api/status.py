"""Status of a ModelOptimization and the worker's result: what the controller writes and what
`kubectl get mopt -o yaml` shows. The worker produces `WorkerResult`; its `compact()` form is
what travels through the pod's termination message (< 4 KiB)."""

from __future__ import annotations

import json
from enum import StrEnum

from pydantic import Field

from .spec import Model, Publish

TERMINATION_LIMIT = 4096


class Phase(StrEnum):
    pending = "Pending"
    optimizing = "Optimizing"
    publishing = "Publishing"
    rolling_out = "RollingOut"
    succeeded = "Succeeded"
    rejected = "Rejected"  # the worker ran, no candidate met the budget: nothing published
    rolled_back = "RolledBack"  # published, but the canary's serving metrics failed the analysis
    failed = "Failed"


class Verdict(StrEnum):
    passed = "passed"
    rejected = "rejected"
    failed = "failed"
    baseline = "baseline"


class Condition(Model):
    type: str
    status: str = Field(pattern=r"^(True|False|Unknown)$")
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Latency(Model):
    batch: int
    p50_ms: float = Field(description="Geometric mean over benchmark rounds of the per-round median latency.")
    p95_ms: float | None = None
    p99_ms: float | None = Field(None, description="Of the pooled timed calls; absent when fewer than 500 "
                                                   "calls were timed (too few for a 99th percentile).")
    throughput: float = Field(description="Samples per second measured while timed at this batch size "
                                          "(geometric mean over rounds), not derived from p50.")
    samples: int = Field(0, description="Timed calls behind these figures.")


class CandidateResult(Model):
    name: str
    runtime: str = ""
    passes: str = Field("", description="The passes applied, in order, in short form.")
    verdict: Verdict = Verdict.failed
    reason: str = ""
    metric: str = ""
    accuracy: float | None = None
    accuracy_drop: float | None = None
    relative_drop: float | None = None
    min_cosine: float | None = None
    accuracy_source: str | None = Field(None, description="Where accuracy was measured when not on the built artifact itself: 'emulated' (runtime tensorrt: the candidate's graph on the CPU with ONNX Runtime, FP16/BF16 tensors rounded to their type; no engine was built or run).")
    latency: list[Latency] = Field(default_factory=list)
    p50_ms: float | None = None
    p99_ms: float | None = None
    speedup: float | None = Field(None, description="Geometric mean over benchmark rounds of the paired "
                                                    "ratio against the baseline (see speedupBasis).")
    speedup_low: float | None = Field(None, description="Lower end of the speedup's 95% interval.")
    speedup_high: float | None = Field(None, description="Upper end of the speedup's 95% interval.")
    rounds: int | None = Field(None, description="Interleaved benchmark rounds behind the speedup: the benchmark's, "
                                                 "plus any added to settle a tie on speed (the selection says so; result.json: tieBreak).")
    size_bytes: int | None = None
    size_ratio: float | None = None
    peak_memory_mb: float | None = Field(None, description="Peak resident memory (MiB) added by loading the "
                                                          "candidate afresh and running it at the largest batch "
                                                          "size, measured in the worker (VmHWM).")
    float_nodes: list[str] = Field(default_factory=list, description="Nodes kept in float by automatic mixed precision.")
    precision: dict[str, int] = Field(default_factory=dict, description="Node count per runtime precision.")
    out_of_range: float | None = Field(None, description="Share of validation inputs outside the calibrated ranges.")
    activation_out_of_range: float | None = Field(None, description="Static INT8 (ONNX Runtime): the largest share, over the quantized tensors, of validation activations outside the range calibrated for that tensor (clipped when quantized).")
    activation_out_of_range_tensor: str | None = Field(None, description="The tensor with that share.")
    warnings: list[str] = Field(default_factory=list)
    artifact: str | None = Field(None, description="The built model: a file, or (runtime onnxruntime-genai) a folder.")
    sha256: str | None = Field(None, description="Of the artifact (a folder: of its model.onnx).")
    # task causal-lm
    perplexity: float | None = Field(None, description="Causal LM: token-weighted perplexity over the validation windows.")
    perplexity_increase: float | None = Field(None, description="Causal LM: relative to the FP32 model's (0.01 = +1%).")
    token_agreement: float | None = Field(None, description="Causal LM: share of validation positions whose teacher-forced next-token top-1 equals the FP32 model's.")
    choice_accuracy: float | None = Field(None, description="Causal LM: accuracy on spec.data.multipleChoice (log-likelihood of each choice).")
    first_token_ms: dict[str, float] = Field(default_factory=dict, description="Causal LM: time to first token (prefill + one token) by prompt length in tokens, ms (geometric mean of round medians).")
    decode_tokens_per_s: float | None = Field(None, description="Causal LM: tokens/s decoding one stream (after the first token).")
    decode_tokens_per_s_low: float | None = Field(None, description="Lower end of its 95% interval (from the paired ratio against the baseline).")
    decode_tokens_per_s_high: float | None = None
    stream_tokens_per_s: float | None = Field(None, description="Causal LM: aggregate tokens/s of target.streams concurrent generations.")
    streams: int | None = None
    bits: dict[str, int] = Field(default_factory=dict, description="Causal LM: MatMul count per weight bit width (4, 8; 32 = kept in FP32).")

    def speedup_text(self) -> str | None:
        """'1.52x [1.45, 1.60]' (with the 95% interval when measured); None without a speedup.
        The one spelling of a speedup: table, report, reasons, status."""
        if self.speedup is None:
            return None
        if self.speedup_low is None or self.speedup_high is None:
            return f"{self.speedup:.2f}x"
        return f"{self.speedup:.2f}x [{self.speedup_low:.2f}, {self.speedup_high:.2f}]"


class TieBreakStep(Model):
    rounds: int = Field(description="Rounds behind the figures at this step, the first ones included.")
    speedups: dict[str, str] = Field(default_factory=dict, description="The tied candidates' speedups and intervals then.")


class TieBreak(Model):
    """Further interleaved rounds run because the fastest candidates' speedup intervals overlapped."""
    candidates: list[str] = Field(default_factory=list, description="The candidates tied on speed before the extra rounds.")
    batch: int = Field(description="The batch size timed (the one that decides).")
    rounds: int = Field(0, description="Rounds added.")
    seconds: float = Field(0.0, description="Wall seconds the added rounds took.")
    longest_round: float = Field(0.0, description="Seconds of the longest added round: no round starts unless it is "
                                                  "expected to end within the budget, so `seconds` stays under the "
                                                  "budget plus this.")
    budget_seconds: float = Field(description="spec.target.tieBreakSeconds (or the benchmark's seconds when unset).")
    separated: bool = Field(False, description="True when the fastest one's interval no longer overlaps the others'.")
    steps: list[TieBreakStep] = Field(default_factory=list)

    def summary(self) -> str:
        how = "separated" if self.separated else "still overlapping"
        return (f"{self.rounds} more interleaved round(s) at batch {self.batch} ({self.seconds:.1f} s of the "
                f"{self.budget_seconds:g} s tie-break budget): {how}")


class Published(Model):
    repository: str
    model_name: str
    version: int
    flavour: str
    sha256: str
    candidate: str
    path: str | None = None


class WorkerResult(Model):
    metric: str
    baseline: CandidateResult
    candidates: list[CandidateResult] = Field(default_factory=list)
    winner: str | None = None
    selection: str = Field("", description="Why the winner won, or why nothing is worth publishing.")
    speedup_basis: str = Field("", description="What speedup and its interval are ratios of.")
    tie_break: TieBreak | None = Field(None, description="Set when overlapping speedup intervals were timed further.")
    pareto: list[str] = Field(default_factory=list)
    report: str | None = Field(None, description="Path of the full JSON report next to the artifacts.")
    html_report: str | None = None
    copies: list[str] = Field(default_factory=list, description="Where result.json and report.html were "
                                                                "also written (spec.artifacts, beside the "
                                                                "published version).")
    warnings: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    seconds: float | None = None
    published: Published | None = Field(None, description="Set when the worker published the winner.")

    def winner_result(self) -> CandidateResult | None:
        return next((c for c in self.candidates if c.name == self.winner), None)

    def compact(self) -> str:
        """JSON under TERMINATION_LIMIT bytes: figures first, prose trimmed, then the losers' artifact paths and
        sha256 (in the full result), then candidates dropped, then the copies' paths (long paths of a deep
        spec.artifacts could otherwise not fit at all)."""
        def small(c: CandidateResult, reason_len: int, slim: bool = False) -> dict:
            paths = {"artifact", "sha256"} if not slim or c.name == self.winner else set()
            d = c.model_dump(by_alias=True, exclude_none=True,
                             include={"name", "runtime", "verdict", "reason", "accuracy", "accuracy_drop",
                                      "p50_ms", "p99_ms", "speedup", "speedup_low", "speedup_high", "rounds",
                                      "size_bytes", "perplexity_increase", "token_agreement",
                                      "decode_tokens_per_s", *paths})
            if "reason" in d:
                d["reason"] = d["reason"][:reason_len]
            for k, v in d.items():
                if isinstance(v, float):
                    d[k] = round(v, 5)
            return d

        levels = ((300, None, False, True), (120, None, False, True), (60, None, False, True),
                  (60, None, True, True), (40, None, True, True), (40, 12, True, True), (0, 6, True, True),
                  (0, 6, True, False), (0, 3, True, False))
        for reason_len, keep, slim, copies in levels:
            cands = self.candidates if keep is None else _keep(self.candidates, self.winner, keep)
            doc = {"metric": self.metric, "winner": self.winner, "report": self.report,
                   "selection": self.selection[:reason_len * 2], "speedupBasis": self.speedup_basis,
                   "copies": self.copies if copies else [],
                   "published": self.published.model_dump(by_alias=True, exclude_none=True) if self.published else None,
                   "baseline": small(self.baseline, reason_len),
                   "candidates": [small(c, reason_len, slim) for c in cands],
                   "truncated": len(cands) < len(self.candidates)}
            text = json.dumps(doc, separators=(",", ":"))
            if len(text.encode()) < TERMINATION_LIMIT:
                return text
        raise ValueError("worker summary does not fit the termination message")


def _keep(cands: list[CandidateResult], winner: str | None, n: int) -> list[CandidateResult]:
    first = [c for c in cands if c.name == winner]
    return first + [c for c in cands if c.name != winner][: n - len(first)]


class JobState(Model):
    name: str | None = None
    attempt: int = 0
    generation: int | None = Field(None, description="The spec generation this Job works on.")
    started: str | None = None
    finished: str | None = None
    exit_code: int | None = None
    log_tail: str | None = None
    next_retry: str | None = None


class RolloutStepStatus(Model):
    step: int
    weight: int
    requests: dict[str, float] = Field(default_factory=dict)
    error_rate: dict[str, float] = Field(default_factory=dict)
    latency_ms: dict[str, float] = Field(default_factory=dict)  # causal LMs: ms per generated token
    first_token_ms: dict[str, float] = Field(default_factory=dict)  # causal LMs: mean time to the first token
    compared: float | None = None  # mirrored requests whose two answers were compared this step
    agreement: float | None = None  # their agreement (see Analysis.min_agreement)
    perplexity_ratio: float | None = None  # causal LMs: canary / stable perplexity on stable's scored continuations
    mirror_failures: float | None = None  # mirrored calls that failed or timed out (the client never saw them)
    bypassed: float | None = None  # requests sent to the model itself, not its router: not split, not judged
    decision: str = ""
    reason: str = ""
    time: str | None = None


class CaptureReport(Model):
    """Does production look like the calibration set? (rollout/capture.py: compare)"""
    samples: int = 0
    calibration_samples: int | None = None
    out_of_range: dict[str, float] = Field(default_factory=dict, description="Per float input: share of captured values outside the calibration set's range (`<input>@position`: outside that position's range).")
    class_histogram: dict[str, float] = Field(default_factory=dict, description="Classification: share of each class in stable's answers on the capture.")
    calibration_class_histogram: dict[str, float] = Field(default_factory=dict, description="The same on the calibration set (the FP32 model's answers).")
    class_shift: float | None = Field(None, description="Total variation distance between the two histograms.")
    class_shift_p: float | None = Field(None, description="Share of random draws of as many answers from the calibration mix that differ from it at least as much: a shift is reported only below 0.01 (small captures differ by chance).")
    unseen_classes: list[int] = Field(default_factory=list, description="Classes stable answered on the capture that never came up on the calibration set.")
    representative: bool | None = Field(None, description="False when a warning below says calibration does not represent production; None when there was nothing to compare.")
    warnings: list[str] = Field(default_factory=list)


class CaptureStatus(Model):
    state: str = Field("Capturing", pattern=r"^(Capturing|Complete|Failed)$")
    uri: str = Field(description="Where the capture is written: part-NNNNN.npz while capturing, then production.npz (a Lathe data set: arrays keyed by model input), answers.npz and report.json.")
    samples: int = Field(0, description="Rows kept so far.")
    requests: int = Field(0, description="Requests whose rows were kept.")
    dropped: int = Field(0, description="Rows of sampled requests not kept: over maxSamples or maxMb.")
    bytes: int = 0
    parts: int = 0
    dataset: str | None = Field(None, description="The merged data set, usable as spec.data.calibration of a later resource.")
    report: CaptureReport | None = None
    reason: str = ""


class RolloutStatus(Model):
    state: str = Field("Pending", pattern=r"^(Pending|Progressing|Promoted|RolledBack|Failed)$")
    stable_version: int | None = None
    canary_version: int | None = None
    step: int = 0
    weights: dict[str, int] = Field(default_factory=dict)
    history: list[RolloutStepStatus] = Field(default_factory=list)
    reason: str = ""
    publish: Publish | None = Field(None, description="The publish settings the canary started with: where to undo it when the spec changes under it.")
    capture: CaptureStatus | None = Field(None, description="Production samples kept during this rollout (spec.publish.rollout.capture).")


class JobEntry(Model):
    """One Job of a fanned-out search (an architecture's, a build shard's, a benchmark): the operator's retry
    state machine runs on these fields alone (controller/plan.py: _job_entry)."""
    job: str | None = Field(None, description="The Job's name (the latest attempt).")
    attempt: int = 0
    phase: str = Field("Pending", pattern=r"^(Pending|Unschedulable|Running|Retrying|Succeeded|Failed)$")
    reason: str = ""
    started: str | None = None
    finished: str | None = None
    exit_code: int | None = None
    next_retry: str | None = None


class ArchitectureStatus(JobEntry):
    """One GPU architecture's build Job (spec.target.gpu.architectures): what it did, in the words of its result.
    With spec.search.parallelism > 1 the architecture's build Jobs are in status.search and `job` is its
    benchmark Job."""
    compute_capability: str
    winner: str | None = Field(None, description="The candidate this architecture's worker would pick on its own.")
    verdict: str | None = Field(None, description="passed: at least one candidate within budget on this architecture; rejected: none; failed: the Job failed.")
    candidates: list[CandidateResult] = Field(default_factory=list, description="Every candidate as measured on this architecture (compact: verdict, speedup, accuracy drop, reason).")


class ShardStatus(JobEntry):
    """One build Job (a shard of the candidates) or a benchmark Job of spec.search.parallelism > 1."""
    shard: int | None = Field(None, description="Build Jobs: which share of the candidates, 1-based; none for a benchmark Job.")
    architecture: str | None = Field(None, description="The compute capability this Job works for (spec.target.gpu.architectures).")
    candidates: list[str] = Field(default_factory=list, description="The candidates this Job builds (or times); for the default search known once its build Job finished.")
    node: str | None = Field(None, description="The node its pod runs (or ran) on.")
    progress: str = Field("", description="Where the Job is: waiting, its worker's last progress line, or what it handed over.")


class SearchStatus(Model):
    """spec.search.parallelism > 1: the build Jobs, each building and validating its share, and the benchmark
    Job timing every passed candidate against the baseline on the target."""
    parallelism: int
    builds: list[ShardStatus] = Field(default_factory=list)
    benchmarks: list[ShardStatus] = Field(default_factory=list, description="One per search (one per architecture with spec.target.gpu.architectures); created once every build Job of it finished.")


class ModelOptimizationStatus(Model):
    observed_generation: int | None = None
    phase: Phase = Phase.pending
    stage: str = ""
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    job: JobState | None = None
    metric: str | None = None
    baseline: CandidateResult | None = None
    candidates: list[CandidateResult] = Field(default_factory=list)
    winner: str | None = None
    speedup: str | None = Field(None, description="Winner's speedup, formatted for the printer column.")
    accuracy_drop: str | None = Field(None, description="Winner's accuracy drop, formatted for the printer column.")
    selection: str | None = Field(None, description="Why the winner won, or why nothing is worth publishing.")
    report: str | None = Field(None, description="result.json in the worker's working folder (gone with its pod "
                                                 "unless spec.artifacts is set).")
    report_copies: list[str] = Field(default_factory=list, description="Copies of result.json and report.html "
                                                                       "that outlive the pod.")
    report_config_map: str | None = Field(None, description="ConfigMap holding the full result for "
                                                            "`lathe report`.")
    published: Published | None = None
    architectures: list[ArchitectureStatus] = Field(default_factory=list, description="spec.target.gpu.architectures: one entry per compute capability, its Job and what it found.")
    search: SearchStatus | None = Field(None, description="spec.search.parallelism > 1: each build Job and the benchmark Job.")
    publish_job: JobState | None = Field(None, description="The Job that assembles the architectures' engines into one version (cc_model_filenames).")
    rollout: RolloutStatus | None = None
