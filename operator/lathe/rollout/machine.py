"""Canary rollout as a PURE state machine.

    status = start(stable_version, canary_version)
    status, actions = advance(rollout_spec, status, observation, now)

`advance` reads nothing but its arguments and returns the next `RolloutStatus` plus declarative,
idempotent actions (`Serve(versions)`, `Route(weights)`) for the executor. Everything needed to
resume after an operator restart is in the status:

- `state`: Pending → Progressing → Promoted | RolledBack (Failed is set by the executor when an
  action cannot be applied);
- `step`: index of the step being measured; `weights`: the weights routed now;
- `history[-1]` while Progressing is the step in measurement: `decision == "Measuring"`, `time` =
  when the step started, and `requests` holds the Triton counters at step start under keys
  `"start:<version>:<counter>"`, so that analysis uses deltas since the step started even after a
  restart. When the step is judged the entry is replaced by the verdict (`Passed`/`Failed`) with
  per-version requests, error rate and mean latency (keys: the version as a string).

Because actions are declarative, repeating a transition (status not persisted after the actions
ran) is harmless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lathe.api.spec import Rollout, RolloutStep
from lathe.api.status import RolloutStatus, RolloutStepStatus

MEASURING = "Measuring"
PASSED = "Passed"
FAILED = "Failed"
COUNTERS = ("success", "failure", "request_us", "compute_us")


# ----------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Counters:
    """Cumulative Triton counters of one model version (Prometheus counters)."""
    success: float = 0.0
    failure: float = 0.0
    request_us: float = 0.0     # nv_inference_request_duration_us
    compute_us: float = 0.0     # nv_inference_compute_infer_duration_us
    p99_ms: float | None = None  # from nv_inference_request_summary_us{quantile="0.99"} when enabled


@dataclass(frozen=True)
class MirrorCounters:
    """Cumulative counters of the router's answer comparison for one (stable, canary) pair."""
    requests: float = 0.0  # compared requests
    samples: float = 0.0   # compared rows
    agree: float = 0.0     # sum over rows of their agreement
    errors: float = 0.0    # mirrored calls that failed
    timeouts: float = 0.0  # mirrored calls not answered within mirror_timeout_ms
    # causal LMs (llm_router_model.py): samples are scored tokens of stable's continuations, agree the
    # positions where both versions' next-token top-1 match, and these the summed negative log-likelihood
    # of those tokens under each version (teacher-forced)
    nll_stable: float = 0.0
    nll_canary: float = 0.0
    calls: float = 0.0  # causal LMs: model calls the router made to judge (2 or 3 per mirrored request)

    @property
    def scored_tokens(self) -> bool:
        return self.nll_stable > 0 or self.nll_canary > 0


MIRROR_COUNTERS = ("requests", "samples", "agree", "errors", "timeouts", "nll_stable", "nll_canary", "calls")
DEFAULT_MIN_AGREEMENT = 0.98  # when neither the analysis nor the resource's budget says
DEFAULT_MIN_TOKEN_AGREEMENT = 0.95  # causal LMs: the budget's minTokenAgreement default
DEFAULT_MAX_PERPLEXITY_RATIO = 1.02  # causal LMs: 1 + the budget's maxPerplexityIncrease default


@dataclass(frozen=True)
class StreamCounters:
    """Causal LMs: cumulative counters of the client streams one version answered, as the router saw them
    (llm_router_model.py). A decoupled model's Triton request duration ends when it takes the request, and its
    error responses count as successes, so for causal LMs the analysis judges errors and speed by these."""
    requests: float = 0.0
    failures: float = 0.0
    tokens: float = 0.0
    first_s: float = 0.0   # summed seconds to the first token
    decode_s: float = 0.0  # summed seconds from the first to the last token


STREAM_COUNTERS = ("requests", "failures", "tokens", "first_s", "decode_s")


@dataclass(frozen=True)
class Observation:
    counters: dict[int, Counters] = field(default_factory=dict)
    error: str | None = None   # metrics could not be read: the machine waits
    mirror: dict[tuple[int, int], MirrorCounters] = field(default_factory=dict)
    router: Counters | None = None  # the `<model>_router` model's own counters (router: triton)
    streams: dict[int, StreamCounters] = field(default_factory=dict)  # causal LMs: per version


# ---------------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Serve:
    """Exactly these versions of the model are loaded (Triton version_policy specific)."""
    versions: tuple[int, ...]


@dataclass(frozen=True)
class Route:
    """Traffic split: {version: percent}; `mirror` percent of requests also go to the other version of
    `pair` (stable, canary), whose answers the router compares."""
    weights: tuple[tuple[int, int], ...]
    mirror: int = 0
    pair: tuple[int, int] | None = None

    @property
    def as_dict(self) -> dict[int, int]:
        return dict(self.weights)


Action = Serve | Route


def _route(weights: dict[int, int], mirror: int = 0, pair: tuple[int, int] | None = None) -> Route:
    return Route(tuple(sorted(weights.items())), mirror if pair else 0, pair if mirror else None)


# ------------------------------------------------------------------------------------------ helpers
def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def start(stable_version: int | None, canary_version: int) -> RolloutStatus:
    """Initial status for rolling out `canary_version` beside `stable_version` (None: nothing served yet)."""
    return RolloutStatus(state="Pending", stable_version=stable_version, canary_version=canary_version, step=0)


def _snapshot(obs: Observation | None, versions: list[int]) -> dict[str, float]:
    snap: dict[str, float] = {}
    if obs is None or obs.error:
        return snap
    for v in versions:
        c = obs.counters.get(v, Counters())
        for k in COUNTERS:
            snap[f"start:{v}:{k}"] = float(getattr(c, k))
    if len(versions) == 2:
        m = obs.mirror.get((versions[0], versions[1]), MirrorCounters())
        for k in MIRROR_COUNTERS:
            snap[f"start:mirror:{k}"] = float(getattr(m, k))
    if obs.router is not None:
        for k in ("success", "failure"):
            snap[f"start:router:{k}"] = float(getattr(obs.router, k))
    if obs.streams:
        for v in versions:
            c = obs.streams.get(v, StreamCounters())
            for k in STREAM_COUNTERS:
                snap[f"start:stream:{v}:{k}"] = float(getattr(c, k))
    return snap


def bypassed(obs: Observation, snap: dict[str, float], model_requests: float,
             mirrored: MirrorCounters | None) -> float | None:
    """Requests that reached the model directly, not through its router this step (None: unknown).
    The model counts one request per routed request plus one per mirrored copy (for causal LMs: the
    scoring calls and reference generations the router counts itself); a few in flight at either end of the
    step are not a bypass."""
    if obs.router is None or "start:router:success" not in snap:
        return None
    routed = 0.0
    for k in ("success", "failure"):
        now, was = float(getattr(obs.router, k)), snap[f"start:router:{k}"]
        routed += now - was if now >= was else now
    if mirrored is None:
        copies = 0.0
    elif mirrored.calls:  # the causal-LM router says how many calls its judgments made
        copies = mirrored.calls
    else:
        copies = mirrored.requests + mirrored.errors + mirrored.timeouts
    extra = model_requests - routed - copies
    return extra if extra > max(5.0, 0.02 * routed) else 0.0


def _mirror_delta(obs: Observation, snap: dict[str, float], pair: tuple[int, int]) -> MirrorCounters:
    m = obs.mirror.get(pair, MirrorCounters())
    vals = {}
    for k in MIRROR_COUNTERS:
        now, was = float(getattr(m, k)), snap.get(f"start:mirror:{k}", 0.0)
        vals[k] = now - was if now >= was else now  # a reset (Triton restarted): count from zero
    return MirrorCounters(**vals)


def _delta(obs: Observation, snap: dict[str, float], v: int) -> Counters:
    c = obs.counters.get(v, Counters())
    vals = {}
    for k in COUNTERS:
        now, was = float(getattr(c, k)), snap.get(f"start:{v}:{k}", 0.0)
        # counters only go down when Triton restarted or the version was reloaded: count from zero
        vals[k] = now - was if now >= was else now
    return Counters(**vals, p99_ms=c.p99_ms)


def _stream_delta(obs: Observation, snap: dict[str, float], v: int) -> StreamCounters:
    c = obs.streams.get(v, StreamCounters())
    vals = {}
    for k in STREAM_COUNTERS:
        now, was = float(getattr(c, k)), snap.get(f"start:stream:{v}:{k}", 0.0)
        vals[k] = now - was if now >= was else now
    return StreamCounters(**vals)


@dataclass(frozen=True)
class Stats:
    requests: float
    error_rate: float
    mean_ms: float | None
    compute_ms: float | None
    p99_ms: float | None


def stats(d: Counters) -> Stats:
    n = d.success + d.failure
    return Stats(requests=n, error_rate=(d.failure / n) if n else 0.0,
                 mean_ms=(d.request_us / n / 1000.0) if n else None,
                 compute_ms=(d.compute_us / n / 1000.0) if n else None, p99_ms=d.p99_ms)


def stream_stats(d: StreamCounters) -> tuple[Stats, float | None]:
    """Causal LMs: (stats with mean_ms = milliseconds per generated token after the first, time to the first
    token in ms) of the client streams one version answered this step."""
    ok = d.requests - d.failures
    per_token = d.decode_s * 1000.0 / (d.tokens - ok) if d.tokens > ok > 0 else None
    return (Stats(requests=d.requests, error_rate=(d.failures / d.requests) if d.requests else 0.0,
                  mean_ms=per_token, compute_ms=None, p99_ms=None),
            d.first_s * 1000.0 / ok if ok > 0 else None)


def _measuring(step: int, weight: int, now: datetime, snap: dict[str, float], reason: str = "") -> RolloutStepStatus:
    return RolloutStepStatus(step=step, weight=weight, requests=snap, decision=MEASURING, reason=reason, time=_iso(now))


def _step(steps: list[RolloutStep], index: int) -> RolloutStep:
    """Step `index` of the spec, or its last step when the status has gone past the spec's end."""
    return steps[min(index, len(steps) - 1)]


def _enough_stable(requests: float, step: RolloutStep) -> bool:
    """Stable's figure in a step is a baseline when stable served at least the sample the canary needs there
    (a straggler request or two as the weights move is not)."""
    return requests >= max(step.min_requests, 1)


def _stable_latency(status: RolloutStatus, stable: int, steps: list[RolloutStep]) -> float | None:
    """Stable's mean latency in the last passed step where it was a baseline."""
    for h in reversed(status.history):
        if (h.decision == PASSED and str(stable) in h.latency_ms
                and _enough_stable(h.requests.get(str(stable), 0), _step(steps, h.step))):
            return h.latency_ms[str(stable)]
    return None


# --------------------------------------------------------------------------------------------- core
def advance(spec: Rollout, status: RolloutStatus, obs: Observation | None, now: datetime, *,
            max_step_seconds: float | None = None) -> tuple[RolloutStatus, list[Action]]:
    """One decision. `max_step_seconds`: roll back when a step has not seen min_requests by then
    (None: wait for traffic forever)."""
    s = status.model_copy(deep=True)
    if s.state in ("Promoted", "RolledBack", "Failed"):
        return s, []
    canary, stable = s.canary_version, s.stable_version
    if canary is None:
        s.state, s.reason = "Failed", "no canary version to roll out"
        return s, []
    steps = spec.steps

    if s.state == "Pending":
        if stable is None or stable == canary or not steps:
            w = {canary: 100}
            s.state, s.stable_version, s.canary_version, s.weights = "Promoted", canary, None, {str(canary): 100}
            s.reason = "nothing served before: promoted directly" if stable is None else "no steps: promoted"
            s.history.append(RolloutStepStatus(step=0, weight=100, decision=PASSED, reason=s.reason, time=_iso(now)))
            return s, [Serve((canary,)), _route(w)]
        w0 = steps[0].weight
        w = {stable: 100 - w0, canary: w0}
        s.state, s.step, s.weights = "Progressing", 0, {str(k): v for k, v in w.items()}
        s.history.append(_measuring(0, w0, now, _snapshot(obs, [stable, canary])))
        s.reason = f"step 1/{len(steps)}: {_describe(steps[0], canary)}"
        return s, [Serve((stable, canary)), _route(w, steps[0].mirror, (stable, canary))]

    # Progressing
    if not s.history or s.history[-1].decision != MEASURING:  # defensive: rebuild the step in measurement
        st = _step(steps, s.step)
        s.history.append(_measuring(s.step, st.weight, now, _snapshot(obs, [stable, canary]),
                                    "measurement restarted"))
        return s, []
    cur = s.history[-1]
    step = _step(steps, s.step)
    if obs is None or obs.error:
        s.reason = f"step {s.step + 1}: waiting, metrics unavailable: {obs.error if obs else 'no observation'}"
        return s, []
    started = _parse(cur.time) or now
    elapsed = (now - started).total_seconds()
    snap = cur.requests
    if not snap:  # step started without metrics: take the baseline now
        cur.requests = _snapshot(obs, [stable, canary])
        cur.time = _iso(now)
        s.reason = f"step {s.step + 1}: baseline counters taken"
        return s, []
    dc, ds = stats(_delta(obs, snap, canary)), stats(_delta(obs, snap, stable))
    model_requests = dc.requests + ds.requests  # every call Triton counted: clients', the router's, bypassing ones
    tokens = bool(obs.streams)  # a causal LM: its client streams, as the router saw them, are judged
    first_ms: dict[str, float] = {}
    if tokens:
        (dc, fc), (ds, fs) = stream_stats(_stream_delta(obs, snap, canary)), stream_stats(_stream_delta(obs, snap, stable))
        first_ms = {str(v): round(f, 4) for v, f in ((canary, fc), (stable, fs)) if f is not None}
    unit = "ms/token" if tokens else "ms"
    a = spec.analysis
    measured = RolloutStepStatus(
        step=s.step, weight=step.weight,
        requests={str(canary): dc.requests, str(stable): ds.requests},
        # like latency: no figure for a version that had no requests this step
        error_rate={str(v): round(x.error_rate, 6) for v, x in ((canary, dc), (stable, ds)) if x.requests},
        latency_ms={str(v): round(x.mean_ms, 4) for v, x in ((canary, dc), (stable, ds)) if x.mean_ms is not None},
        first_token_ms=first_ms, time=_iso(now))

    def fail(why: str):
        measured.decision, measured.reason = FAILED, why
        s.history[-1] = measured
        s.state, s.reason = "RolledBack", f"step {s.step + 1} ({step.weight}%): {why}"
        s.canary_version, s.weights = None, {str(stable): 100}
        return s, [_route({stable: 100}), Serve((stable,))]

    # minRequests 0: the step needs no canary traffic; with none, error rate and latency are absent
    # (not failed) and the step passes on its pause alone, but figures that are present still judge.
    enough = dc.requests >= step.min_requests
    mirrored = _mirror_delta(obs, snap, (stable, canary)) if step.mirror else None
    compared_enough = mirrored is None or mirrored.requests >= a.min_compared_requests
    # fail fast on errors once the step has its minimum sample, even before the pause is over
    if enough and dc.error_rate > a.max_error_rate:
        return fail(f"canary error rate {dc.error_rate:.4f} > {a.max_error_rate} over {dc.requests:.0f} requests")
    if elapsed < step.pause_seconds or not enough or not compared_enough:
        if max_step_seconds is not None and elapsed >= max_step_seconds and not (enough and compared_enough):
            if not enough:
                return fail(f"not enough traffic: {dc.requests:.0f}/{step.min_requests} canary requests "
                            f"after {elapsed:.0f}s")
            return fail(f"not enough compared answers: {mirrored.requests:.0f}/{a.min_compared_requests} mirrored "
                        f"requests after {elapsed:.0f}s ({mirrored.errors + mirrored.timeouts:.0f} mirror failures)")
        s.reason = (f"step {s.step + 1}/{len(steps)} ({step.weight}%): measuring {elapsed:.0f}/{step.pause_seconds}s, "
                    f"{dc.requests:.0f}/{step.min_requests} canary requests"
                    + (f", {mirrored.requests:.0f}/{a.min_compared_requests} compared" if mirrored else ""))
        return s, []
    # latency against stable: this step's stable traffic, else the last step where stable had enough
    base = ds.mean_ms if _enough_stable(ds.requests, step) else _stable_latency(s, stable, steps)
    notes = []
    if dc.mean_ms is not None and base:
        ratio = dc.mean_ms / base
        measured.latency_ms["ratio"] = round(ratio, 4)
        if ratio > a.max_latency_ratio:
            what = "time per generated token" if tokens else "mean latency"
            return fail(f"canary {what} {dc.mean_ms:.2f} {unit} is {ratio:.2f}x stable {base:.2f} {unit} "
                        f"(max {a.max_latency_ratio}x)")
    elif dc.requests == 0:
        notes.append("no canary requests (minRequests 0): error rate and latency not measured")
    else:
        notes.append("latency ratio not measurable (stable served too few requests for a baseline)")
    if a.max_p99_latency_ms is not None:
        if dc.p99_ms is None:
            notes.append("p99 not measurable (Triton summaries off)")
        elif dc.p99_ms > a.max_p99_latency_ms:
            return fail(f"canary p99 {dc.p99_ms:.2f} ms > {a.max_p99_latency_ms} ms")
        else:
            measured.latency_ms["p99"] = round(dc.p99_ms, 4)
    direct = bypassed(obs, snap, model_requests, mirrored)
    if direct:
        measured.bypassed = direct
        notes.append(f"{direct:.0f} requests reached the model directly, not through its router: "
                     "they were neither split nor compared (clients should call <model>_router)")
    if mirrored is not None and mirrored.scored_tokens:
        verdict = _judge_tokens(a, mirrored, measured)
        if verdict.startswith("fail:"):
            return fail(verdict[5:])
        notes.append(verdict)
    elif mirrored is not None:
        agree = mirrored.agree / mirrored.samples if mirrored.samples else 0.0
        floor = a.min_agreement if a.min_agreement is not None else DEFAULT_MIN_AGREEMENT
        measured.compared, measured.agreement = mirrored.requests, round(agree, 6)
        measured.mirror_failures = mirrored.errors + mirrored.timeouts
        if agree < floor:
            return fail(f"canary answers agree with stable on {agree:.4f} of {mirrored.samples:.0f} compared samples "
                        f"({mirrored.requests:.0f} mirrored requests; min {floor:.4f})")
        notes.append(f"agreement {agree:.4f} over {mirrored.samples:.0f} samples (min {floor:.4f})")
    measured.decision = PASSED
    figures = [] if dc.requests == 0 else [f"error rate {dc.error_rate:.4f}, mean {dc.mean_ms or 0:.2f} {unit}"
                                            + (f" vs stable {base:.2f} {unit}" if base else "")]
    measured.reason = "; ".join(figures + notes)
    s.history[-1] = measured
    if s.step + 1 >= len(steps):
        s.state, s.stable_version, s.canary_version = "Promoted", canary, None
        s.weights = {str(canary): 100}
        s.reason = f"promoted version {canary} after {len(steps)} steps; version {stable} unloaded"
        return s, [_route({canary: 100}), Serve((canary,))]
    s.step += 1
    nxt = steps[s.step]
    w = {stable: 100 - nxt.weight, canary: nxt.weight}
    s.weights = {str(k): v for k, v in w.items()}
    s.history.append(_measuring(s.step, nxt.weight, now, _snapshot(obs, [stable, canary])))
    s.reason = f"step {s.step + 1}/{len(steps)}: {_describe(nxt, canary)}"
    return s, [_route(w, nxt.mirror, (stable, canary))]


def _judge_tokens(a, mirrored: MirrorCounters, measured: RolloutStepStatus) -> str:
    """Causal LMs: the canary scored stable's continuations. "fail:<why>" or a note for the step's reason.
    Next-token agreement = positions where the canary's top-1 equals stable's; perplexity ratio = canary
    perplexity / stable perplexity on the same tokens = exp((NLL canary - NLL stable) / tokens)."""
    n = mirrored.samples
    agree = mirrored.agree / n if n else 0.0
    ratio = math.exp((mirrored.nll_canary - mirrored.nll_stable) / n) if n else float("inf")
    floor = a.min_agreement if a.min_agreement is not None else DEFAULT_MIN_TOKEN_AGREEMENT
    ceiling = a.max_perplexity_ratio if a.max_perplexity_ratio is not None else DEFAULT_MAX_PERPLEXITY_RATIO
    measured.compared, measured.agreement = mirrored.requests, round(agree, 6)
    measured.perplexity_ratio = round(ratio, 6) if n else None
    measured.mirror_failures = mirrored.errors + mirrored.timeouts
    over = f"{n:.0f} scored tokens of stable's continuations ({mirrored.requests:.0f} mirrored requests)"
    if agree < floor:
        return f"fail:canary's next-token top-1 agrees with stable's on {agree:.4f} of {over}; min {floor:.4f}"
    if ratio > ceiling:
        return f"fail:canary perplexity is {ratio:.4f}x stable's on {over}; max {ceiling:.4f}x"
    return (f"token agreement {agree:.4f} (min {floor:.4f}), perplexity ratio {ratio:.4f} (max {ceiling:.4f}) "
            f"over {n:.0f} tokens")


def _describe(step, canary: int) -> str:
    if step.weight == 0 and step.mirror:
        return f"shadow: {step.mirror}% of requests mirrored to version {canary}, none answered by it"
    return f"{step.weight}% to version {canary}" + (f", {step.mirror}% mirrored" if step.mirror else "")


def now_utc() -> datetime:
    return datetime.now(UTC)
