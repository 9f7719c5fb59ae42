"""The reconcile state machine, as a pure function: what the world looks like -> the status to
write and the actions to take. No Kubernetes client here; handlers.py observes and applies.

The machine is level-based: it looks at the spec generation, the status it wrote before and the
Jobs that exist now, so an operator restart resumes from status without repeating finished work,
and a spec change supersedes the Jobs of older generations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import (
    ArchitectureStatus,
    CandidateResult,
    Condition,
    JobEntry,
    JobState,
    ModelOptimizationStatus,
    Phase,
    Published,
    RolloutStatus,
    SearchStatus,
    ShardStatus,
)
from lathe.worker.shards import planned_names, shard_count

from .killed import killed_detail

EXIT_BAD_INPUT = 2  # lathe worker: the model or data is wrong; retrying cannot help
LOG_TAIL = 1500


@dataclass(frozen=True)
class ObservedJob:
    name: str
    generation: int
    attempt: int
    state: str  # active | succeeded | failed
    exit_code: int | None = None
    message: str | None = None  # the worker's termination message
    log_tail: str | None = None
    started: str | None = None
    finished: str | None = None
    reason: str | None = None  # the Job's failure reason (DeadlineExceeded, …)
    pod: str | None = None  # the pod whose termination message was read (or that cannot be scheduled)
    unschedulable: str | None = None  # the scheduler's message for a pod of this Job it cannot place
    architecture: str | None = None  # the compute capability of a GPU build Job (spec.target.gpu.architectures)
    publisher: bool = False  # the Job that publishes the architectures' engines as one version
    ready: int = 0  # pods of the Job running and ready
    container_reason: str | None = None  # the kubelet's reason for the worker's end (OOMKilled, Error, ...)
    memory_limit: str | None = None  # the worker container's limits.memory
    component: str = "worker"  # worker | builder (a shard's build Job) | benchmark | publisher
    shard: int | None = None  # a build Job's share of the candidates (spec.search.parallelism), 1-based
    node: str | None = None  # the node its latest pod was placed on
    progress: str | None = None  # the running worker's last progress line (builder and benchmark Jobs)


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 3
    backoff_seconds: float = 10.0


@dataclass(frozen=True)
class World:
    generation: int
    spec: ModelOptimizationSpec | None
    problems: list[str]
    status: ModelOptimizationStatus
    jobs: list[ObservedJob]
    now: datetime
    policy: Policy = Policy()


@dataclass(frozen=True)
class CreateJob:
    attempt: int
    architecture: str | None = None  # compute capability: that architecture's build Job
    role: str = "worker"  # worker (the whole search) | build (shard `shard` of `shards`) | benchmark
    shard: int | None = None
    shards: int = 1
    failed: tuple[tuple[int, str], ...] = ()  # benchmark: build shards that failed for good, and why


@dataclass(frozen=True)
class CreatePublishJob:
    """Publish `candidate`'s engines, kept by every architecture's worker, as one version."""
    candidate: str
    attempt: int = 1


@dataclass(frozen=True)
class DeleteJob:
    name: str
    why: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Requeue:
    seconds: float


@dataclass(frozen=True)
class RolloutTick:
    """Advance the canary one step (side effects: Triton metrics and model control)."""


@dataclass(frozen=True)
class AbandonRollout:
    """Send all traffic back to the stable version and unload the canary (its spec is superseded)."""
    rollout: RolloutStatus


@dataclass(frozen=True)
class KeepReport:
    """Copy the full result from the worker pod's log into the resource's report ConfigMap."""
    job: str
    pod: str | None


Action = CreateJob | CreatePublishJob | DeleteJob | Event | Requeue | RolloutTick | AbandonRollout | KeepReport


@dataclass
class Plan:
    status: ModelOptimizationStatus
    actions: list[Action] = field(default_factory=list)


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(status: ModelOptimizationStatus, type_: str, ok: bool | None, reason: str, message: str,
                  now: datetime, generation: int) -> None:
    value = "Unknown" if ok is None else ("True" if ok else "False")
    for c in status.conditions:
        if c.type == type_:
            if c.status != value:
                c.last_transition_time = _ts(now)
            c.status, c.reason, c.message, c.observed_generation = value, reason, message, generation
            return
    status.conditions.append(Condition(type=type_, status=value, reason=reason, message=message,
                                       last_transition_time=_ts(now), observed_generation=generation))


def _asks(spec, architecture: str | None = None, builder: bool = False) -> str:
    """What the worker pod asks the scheduler for, in the spec's words (with `architecture`: that
    architecture's build Job, its nodeSelector included; `builder`: a build Job of spec.search)."""
    from .jobs import architecture_selector, builder_placement  # pure, like this module

    t = spec.target
    parts = [f"{t.gpu.count} {t.gpu.resource_name}"] if str(t.device) == "gpu" else []
    selector, requests = dict(t.node_selector), dict(t.resources.requests or {})
    arch = next((a for a in t.gpu.architectures if a.compute_capability == architecture), None)
    if arch is not None:
        selector = architecture_selector(spec, arch)
    if builder:
        selector, _, resources = builder_placement(spec, arch)
        requests = dict(resources.requests or {})
    parts += [f"nodeSelector {selector}"] if selector else []
    parts += [f"{k}={v}" for k, v in requests.items()]
    return ", ".join(parts) or "cpu defaults"


def condition(status: ModelOptimizationStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def _fmt_speedup(c: CandidateResult | None) -> str | None:
    return c.speedup_text() if c else None


def _fmt_drop(c: CandidateResult | None) -> str | None:
    return f"{c.accuracy_drop:.4f}" if c and c.accuracy_drop is not None else None


def parse_result(message: str) -> dict:
    doc = json.loads(message)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def plan(world: World) -> Plan:
    st = world.status.model_copy(deep=True)
    gen, now = world.generation, world.now
    actions: list[Action] = []
    out = Plan(st, actions)

    def transition(phase: Phase, stage: str, message: str, event: tuple[str, str] | None = None) -> None:
        if st.phase != phase or st.stage != stage:
            if event:
                actions.append(Event(event[0], event[1], message))
        st.phase, st.stage, st.message = phase, stage, message

    # A new generation supersedes everything the old one was doing.
    if st.observed_generation != gen:
        stale = [j for j in world.jobs if j.generation != gen and j.state == "active"]
        for j in stale:
            actions.append(DeleteJob(j.name, f"superseded by generation {gen}"))
        if st.observed_generation is not None:
            actions.append(Event("Normal", "SpecChanged",
                                 f"spec generation {gen} supersedes {st.observed_generation}"
                                 + (f"; stopped {', '.join(j.name for j in stale)}" if stale else "")))
        published, rollout = st.published, st.rollout
        if rollout and rollout.state in ("Pending", "Progressing"):
            # The canary came from the old spec: serving it on would judge a model nobody asked for.
            why = f"abandoned: spec generation {gen} supersedes the canary of version {rollout.canary_version}"
            if rollout.stable_version is not None:
                why += f"; all traffic back to version {rollout.stable_version}"
            actions.append(AbandonRollout(rollout))
            actions.append(Event("Warning", "RolloutAbandoned", why))
            rollout = rollout.model_copy(update={"state": "RolledBack", "reason": why})
        else:
            rollout = None
        st = ModelOptimizationStatus(observed_generation=gen, conditions=st.conditions, published=published,
                                     rollout=rollout)
        out.status = st
    else:
        # Jobs of older generations that are still around get cleaned up quietly.
        for j in world.jobs:
            if j.generation != gen and j.state == "active":
                actions.append(DeleteJob(j.name, f"superseded by generation {gen}"))

    if world.problems or world.spec is None:
        msg = "; ".join(world.problems) or "spec could not be read"
        set_condition(st, "Validated", False, "InvalidSpec", msg, now, gen)
        set_condition(st, "Ready", False, "InvalidSpec", msg, now, gen)
        transition(Phase.failed, "validate", msg, ("Warning", "InvalidSpec"))
        return out

    if st.phase in (Phase.succeeded, Phase.rejected, Phase.rolled_back) or (
            st.phase == Phase.failed and st.stage != "validate" and st.observed_generation == gen
            and ((st.job and st.job.generation == gen and st.job.finished) or st.architectures or st.search)):
        return out  # terminal for this generation: nothing to redo after a restart

    if st.phase == Phase.rolling_out:
        actions.append(RolloutTick())
        return out

    if architectures_of(world.spec):
        _plan_architectures(world, st, actions, transition)
        return out
    if shard_count(world.spec) > 1:
        _plan_search(world, st, actions, transition)
        return out

    mine = sorted((j for j in world.jobs if j.generation == gen), key=lambda j: j.attempt)
    current = mine[-1] if mine else None

    recorded = st.job if st.job and st.job.generation == gen and st.job.attempt else None
    if current is None or (recorded and recorded.attempt > current.attempt):
        # Nothing observed yet for this generation (or the newest attempt is not visible yet):
        # (re)issue the create, which is idempotent because the Job name carries the attempt.
        attempt = recorded.attempt if recorded else 1
        if not recorded:
            st.job = JobState(attempt=attempt, generation=gen, started=_ts(now))
        actions.append(CreateJob(attempt))
        set_condition(st, "Validated", None, "Optimizing", "worker Job created", now, gen)
        set_condition(st, "Ready", False, "Optimizing", "optimization in progress", now, gen)
        transition(Phase.optimizing, "worker",
                   f"worker Job attempt {attempt}/{world.policy.max_attempts} created",
                   ("Normal", "JobCreated"))
        return out

    job = JobState(name=current.name, attempt=current.attempt, generation=gen,
                   started=current.started or (recorded.started if recorded else None), finished=current.finished)
    st.job = job

    if current.state == "active" and current.unschedulable:
        # A GPU resource on a cluster without GPU nodes (or a selector nothing matches) would wait in
        # silence: say which pod, what it asks for and what the scheduler answered.
        asks = _asks(world.spec)
        msg = f"worker pod {current.pod} cannot be scheduled ({asks}): {current.unschedulable}"
        set_condition(st, "Scheduled", False, "Unschedulable", msg, now, gen)
        transition(Phase.pending, "scheduling", msg, ("Warning", "WorkerUnschedulable"))
        return out
    if current.state == "active":
        if (c := condition(st, "Scheduled")) is not None and c.status == "False":
            set_condition(st, "Scheduled", True, "Scheduled", f"worker pod of {current.name} placed on a node", now, gen)
        transition(Phase.optimizing, "worker", f"worker Job {current.name} running (attempt {current.attempt})",
                   ("Normal", "JobRunning"))
        return out

    if current.state == "succeeded":
        _collect(world, st, actions, transition, current, job)
        return out

    # Failed attempt.
    job.exit_code = current.exit_code
    job.log_tail = (current.log_tail or current.message or "")[-LOG_TAIL:] or None
    detail = _failure_detail(current, world.spec)
    if current.exit_code == EXIT_BAD_INPUT:
        reason = _failure_kind(current)
        set_condition(st, "Validated", False, reason, detail, now, gen)
        set_condition(st, "Ready", False, reason, detail, now, gen)
        transition(Phase.failed, "worker", detail, ("Warning", reason))
        return out
    if current.attempt < world.policy.max_attempts:
        due_at = recorded.next_retry if recorded and recorded.attempt == current.attempt else None
        if due_at is None:
            delay = world.policy.backoff_seconds * (2 ** (current.attempt - 1))
            job.next_retry = _ts(now + timedelta(seconds=delay))
            transition(Phase.optimizing, "retry",
                       f"attempt {current.attempt}/{world.policy.max_attempts} failed ({detail}); "
                       f"retrying in {delay:.0f}s", ("Warning", "JobFailed"))
            actions.append(Requeue(delay))
            return out
        due = datetime.fromisoformat(due_at.replace("Z", "+00:00"))
        if now < due:
            job.next_retry = due_at
            actions.append(Requeue((due - now).total_seconds()))
            return out
        attempt = current.attempt + 1
        st.job = JobState(attempt=attempt, generation=gen, started=_ts(now))
        actions.append(CreateJob(attempt))
        transition(Phase.optimizing, "worker", f"worker Job attempt {attempt}/{world.policy.max_attempts} created",
                   ("Normal", "JobCreated"))
        return out
    set_condition(st, "Validated", False, "WorkerFailed", detail, now, gen)
    set_condition(st, "Ready", False, "WorkerFailed", detail, now, gen)
    transition(Phase.failed, "worker", f"gave up after {current.attempt} attempts: {detail}",
               ("Warning", "WorkerFailed"))
    return out


def _collect(world: World, st: ModelOptimizationStatus, actions: list[Action], transition, current: ObservedJob,
             job: JobState) -> None:
    """The worker that ran selection (the single Job, or the benchmark Job of a search split into shards)
    succeeded: its summary becomes status, then Published and the canary, or Rejected."""
    gen, now = world.generation, world.now
    try:
        doc = parse_result(current.message or "")
        baseline = CandidateResult.model_validate(doc["baseline"])
        candidates = [CandidateResult.model_validate(c) for c in doc.get("candidates", [])]
    except (ValueError, KeyError, TypeError) as e:
        job.exit_code = current.exit_code
        job.log_tail = (current.message or "")[-LOG_TAIL:]
        set_condition(st, "Validated", False, "BadWorkerResult", f"unreadable worker result: {e}", now, gen)
        set_condition(st, "Ready", False, "BadWorkerResult", "worker result unreadable", now, gen)
        transition(Phase.failed, "collect", f"worker {current.name} finished but its result is unreadable: {e}",
                   ("Warning", "BadWorkerResult"))
        return
    st.metric = doc.get("metric")
    st.baseline, st.candidates = baseline, candidates
    actions.append(KeepReport(current.name, current.pod))
    st.report = doc.get("report")
    st.report_copies = list(doc.get("copies") or [])
    st.selection = doc.get("selection") or None
    st.winner = doc.get("winner")
    win = next((c for c in candidates if c.name == st.winner), None)
    st.speedup, st.accuracy_drop = _fmt_speedup(win), _fmt_drop(win)
    passed = sum(c.verdict == "passed" for c in candidates)
    summary = f"{passed}/{len(candidates)} candidates within budget"
    if win is None:
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in candidates)[:900]
        why = st.selection or "nothing published"
        set_condition(st, "Validated", False, "NoCandidateInBudget", f"{summary}: {reasons}", now, gen)
        set_condition(st, "Ready", False, "NoCandidateInBudget", why, now, gen)
        transition(Phase.rejected, "select", f"{summary}; {why}", ("Warning", "NoCandidateInBudget"))
        return
    set_condition(st, "Validated", True, "CandidateSelected",
                  f"{summary}; winner {win.name} ({_fmt_speedup(win) or '?'} faster, drop {_fmt_drop(win)})",
                  now, gen)
    _published(world, st, actions, transition, win.name, doc.get("published"), summary)


def _published(world: World, st: ModelOptimizationStatus, actions: list[Action], transition, winner: str,
               pub: dict | None, summary: str) -> None:
    """The winner is chosen (and published when `pub`): Published, then the canary or Succeeded."""
    gen, now = world.generation, world.now
    if pub:
        st.published = Published.model_validate(pub)
        set_condition(st, "Published", True, "VersionPublished",
                      f"{st.published.model_name} version {st.published.version} ({st.published.flavour})",
                      now, gen)
        actions.append(Event("Normal", "Published",
                             f"{winner} published as {st.published.model_name} v{st.published.version}"))
    spec = world.spec
    if pub and spec.publish and spec.publish.triton_url and spec.publish.rollout:
        st.rollout = RolloutStatus(state="Pending", canary_version=st.published.version, publish=spec.publish)
        set_condition(st, "RolledOut", None, "Progressing", "canary starting", now, gen)
        set_condition(st, "Ready", False, "RollingOut", "canary in progress", now, gen)
        transition(Phase.rolling_out, "rollout", f"winner {winner}: canary of version {st.published.version}",
                   ("Normal", "RolloutStarted"))
        actions.append(RolloutTick())
        return
    set_condition(st, "Ready", True, "Succeeded", f"winner {winner}", now, gen)
    transition(Phase.succeeded, "done", f"winner {winner}: {summary}", ("Normal", "Succeeded"))


# ------------------------------------------------------------------ one engine per GPU architecture
def architectures_of(spec: ModelOptimizationSpec | None) -> list:
    """spec.target.gpu.architectures when the fan-out applies (a gpu target naming at least one)."""
    if spec is None or str(spec.target.device) != "gpu":
        return []
    return list(spec.target.gpu.architectures)


@dataclass(frozen=True)
class Choice:
    winner: str | None
    reason: str
    candidates: list[CandidateResult]  # one per candidate, as judged across every architecture


def choose_across(per_arch: dict[str, list[CandidateResult]]) -> Choice:
    """What to publish when every architecture's Job finished: the candidate that passed on EVERY
    architecture with the best worst-case speedup (a version serves all of them, so its slowest
    architecture is what it is worth); nothing, naming the architecture, when none passed on all."""
    ccs = list(per_arch)
    names: list[str] = []
    for cands in per_arch.values():
        names += [c.name for c in cands if c.name not in names]
    merged, eligible = [], []
    for n in names:
        on = {cc: next((c for c in per_arch[cc] if c.name == n), None) for cc in ccs}
        missing = [cc for cc, c in on.items() if c is None]
        failed = [cc for cc, c in on.items() if c is not None and c.verdict != "passed"]
        speeds = {cc: c.speedup for cc, c in on.items() if c is not None and c.speedup is not None}
        worst_cc = min(speeds, key=speeds.get) if speeds else next(cc for cc, c in on.items() if c is not None)
        base = on[worst_cc].model_copy(deep=True)
        if missing or failed:
            why = "; ".join([f"not built on {cc}" for cc in missing]
                            + [f"{on[cc].verdict} on {cc}: {on[cc].reason}" for cc in failed])
            base.verdict, base.reason = ("failed" if all(on[cc].verdict == "failed" for cc in failed) and not missing
                                         else "rejected"), why[:600]
        elif len(speeds) < len(ccs):
            base.verdict = "rejected"
            base.reason = f"passed on every architecture but not timed on {', '.join(c for c in ccs if c not in speeds)}"
        else:
            base.reason = (f"passed on every architecture ({', '.join(ccs)}); worst-case speedup "
                           f"{speeds[worst_cc]:.2f}x on {worst_cc}")
            eligible.append((speeds[worst_cc], n, worst_cc))
        merged.append(base)
    if not eligible:
        none_passed = [cc for cc in ccs if not any(c.verdict == "passed" for c in per_arch[cc])]
        if none_passed:
            reason = f"nothing published: no candidate within budget on architecture {', '.join(none_passed)}"
        else:
            reason = "nothing published: no candidate passed on every architecture (" + "; ".join(
                f"{c.name}: {c.reason}" for c in merged)[:700] + ")"
        return Choice(None, reason, merged)
    eligible.sort(reverse=True)
    speed, win, worst_cc = eligible[0]
    reason = (f"{win}: passed on every architecture ({', '.join(ccs)}) with the best worst-case speedup, "
              f"{speed:.2f}x on {worst_cc}")
    if len(eligible) > 1:
        reason += "; then " + ", ".join(f"{n} {s:.2f}x on {cc}" for s, n, cc in eligible[1:4])
    return Choice(win, reason, merged)


def _latest(jobs: list[ObservedJob]) -> ObservedJob | None:
    return max(jobs, key=lambda j: j.attempt) if jobs else None


E = TypeVar("E", bound=JobEntry)


def _job_entry(world: World, prev: E, job: ObservedJob | None, create: CreateJob, actions: list[Action], what: str,
               asks: str, on_success) -> E:
    """One Job of a fan-out (an architecture's, a build shard's, a benchmark) through the single Job's rules:
    created when not there (idempotent: the name carries generation and attempt), Pending / Unschedulable /
    Running while it runs, `on_success(entry, job)` when it succeeded, and when it failed: retried with
    doubling backoff up to policy.max_attempts, bad input (exit 2) final at once."""
    e = prev.model_copy(deep=True)
    if job is None:
        if e.phase in ("Succeeded", "Failed"):
            return e  # finished and its Job since removed: what status recorded stands
        actions.append(replace(create, attempt=e.attempt or 1))
        e.attempt, e.phase = e.attempt or 1, "Pending"
        e.started = e.started or _ts(world.now)
        e.reason = f"{what} created"
        return e
    if e.attempt > job.attempt:  # the next attempt is not visible yet: the create is idempotent
        actions.append(replace(create, attempt=e.attempt))
        return e
    e.job, e.attempt, e.started, e.finished = job.name, job.attempt, job.started or e.started, job.finished
    if isinstance(e, ShardStatus):
        e.node = job.node or e.node
    if job.state == "active":
        if job.unschedulable:
            e.phase = "Unschedulable"
            e.reason = f"worker pod {job.pod} cannot be scheduled ({asks}): {job.unschedulable}"
        else:
            e.phase = "Running" if job.ready else "Pending"
            e.reason = "worker running" if job.ready else "waiting for the worker pod to start"
            if isinstance(e, ShardStatus):
                e.progress = (job.progress or "running") if job.ready else "waiting for its pod to start"
        return e
    e.exit_code = job.exit_code
    if job.state == "succeeded":
        e.phase, e.next_retry = "Succeeded", None
        on_success(e, job)
        return e
    detail, limit = _failure_detail(job, world.spec), world.policy.max_attempts
    if job.exit_code != EXIT_BAD_INPUT and job.attempt < limit:
        due_at = e.next_retry if prev.attempt == job.attempt else None
        if due_at is None:
            delay = world.policy.backoff_seconds * (2 ** (job.attempt - 1))
            due_at = _ts(world.now + timedelta(seconds=delay))
        due = datetime.fromisoformat(due_at.replace("Z", "+00:00"))
        if world.now < due:
            e.phase, e.next_retry = "Retrying", due_at
            e.reason = f"attempt {job.attempt}/{limit} failed ({detail}); retrying at {due_at}"
            actions.append(Requeue((due - world.now).total_seconds()))
            return e
        e.attempt, e.next_retry, e.phase, e.finished = job.attempt + 1, None, "Pending", None
        e.reason = f"attempt {e.attempt}/{limit} created after: {detail}"
        actions.append(replace(create, attempt=e.attempt))
        return e
    e.phase, e.reason = "Failed", detail
    if isinstance(e, ArchitectureStatus):
        e.verdict = "failed"
    if job.attempt > 1 and job.exit_code != EXIT_BAD_INPUT:
        e.reason = f"gave up after {job.attempt} attempts: {detail}"
    return e


def _arch_result(e: ArchitectureStatus, job: ObservedJob) -> None:
    """An architecture's worker (the whole search there, or its benchmark Job) succeeded: what it found."""
    try:
        doc = parse_result(job.message or "")
        e.candidates = [CandidateResult.model_validate(c) for c in doc.get("candidates", [])]
    except (ValueError, TypeError) as err:
        e.phase, e.verdict, e.reason = "Failed", "failed", f"unreadable worker result: {err}"
        return
    e.winner = doc.get("winner")
    passed = sum(c.verdict == "passed" for c in e.candidates)
    e.verdict = "passed" if passed else "rejected"
    e.reason = f"{passed}/{len(e.candidates)} candidates within budget" + (
        f"; {doc['selection']}" if doc.get("selection") else "")


def _build_result(e: ShardStatus, job: ObservedJob) -> None:
    """A build Job succeeded: the candidates it handed over (its termination message, `handover_summary`)."""
    try:
        doc = parse_result(job.message or "")
        built = [(str(c["name"]), str(c.get("verdict", "")), str(c.get("reason", ""))) for c in doc["candidates"]]
    except (ValueError, KeyError, TypeError) as err:
        e.phase, e.reason = "Failed", f"Job {job.name}: unreadable build result: {err}"
        return
    e.candidates = [n for n, _, _ in built]
    failed = [f"{n}: {r}" for n, v, r in built if v == "failed"]
    e.progress = (f"handed over {len(built)} candidate(s): {len(built) - len(failed)} built and validated"
                  + (f", {len(failed)} failed" if failed else ""))
    e.reason = e.progress + (f" ({'; '.join(failed)})"[:600] if failed else "")


@dataclass
class Group:
    """Where one split search stands (spec.search.parallelism > 1): its build Jobs, then its benchmark Job."""
    builds: list[ShardStatus]
    benchmark: ShardStatus | None = None
    failure: tuple[str, str] | None = None  # (reason for status, what happened): nothing to benchmark, or bad input
    result: ObservedJob | None = None  # the benchmark Job, succeeded

    def line(self) -> str:
        counts: dict[str, int] = {}
        for b in self.builds:
            counts[b.phase] = counts.get(b.phase, 0) + 1
        text = "builds " + ", ".join(f"{n} {phase}" for phase, n in counts.items())
        return text + (f"; benchmark {self.benchmark.phase}" if self.benchmark else "")

    def entries(self) -> list[ShardStatus]:
        return self.builds + ([self.benchmark] if self.benchmark else [])


def _shard_group(world: World, prev: SearchStatus | None, cc: str | None, shards: int, actions: list[Action]
                 ) -> Group:
    """The build Jobs of one search (one architecture's, with `cc`), each retried on its own; once all
    finished, one benchmark Job told which shards failed for good. A build Job that failed fails only its
    candidates (the benchmark Job reports them failed with the reason); bad input (exit 2) is the model's or
    data's, the same for every shard: it fails the search."""
    spec, gen = world.spec, world.generation
    mine = [j for j in world.jobs if j.generation == gen and j.architecture == cc]
    old = {(b.architecture, b.shard): b for b in (prev.builds if prev else [])}
    names = planned_names(spec, shards)
    where = f" for compute capability {cc}" if cc else ""
    builds, kinds = [], {}
    for k in range(1, shards + 1):
        entry = old.get((cc, k)) or ShardStatus(shard=k, architecture=cc, candidates=names[k - 1] if names else [],
                                                progress="" if names else "default search: candidates named after intake")
        job = _latest([j for j in mine if j.component == "builder" and j.shard == k])
        e = _job_entry(world, entry, job, CreateJob(1, cc, role="build", shard=k, shards=shards), actions,
                       f"build Job {k}/{shards}{where}", _asks(spec, cc, builder=True), _build_result)
        if e.phase == "Failed" and job is not None and job.exit_code == EXIT_BAD_INPUT:
            kinds[k] = _failure_kind(job)
        elif e.phase == "Failed" and e.progress != e.reason:
            e.progress = f"failed: its candidates are reported failed ({e.reason})"[:300]
        builds.append(e)
    group = Group(builds)
    if kinds:
        k = min(kinds)
        group.failure = (kinds[k], f"build Job {k}/{shards}{where}: {builds[k - 1].reason}")
        return group
    if any(b.phase not in ("Succeeded", "Failed") for b in builds):
        return group
    if not any(b.phase == "Succeeded" for b in builds):
        group.failure = ("WorkerFailed", f"every build Job{where} failed: "
                         + "; ".join(f"{b.shard}/{shards}: {b.reason}" for b in builds))
        return group
    failed = tuple((b.shard, b.reason[:500]) for b in builds if b.phase == "Failed")
    old_bench = next((b for b in (prev.benchmarks if prev else []) if b.architecture == cc), None)
    entry = old_bench or ShardStatus(architecture=cc, candidates=[n for b in builds if b.phase == "Succeeded"
                                                                  for n in b.candidates])
    job = _latest([j for j in mine if j.component == "benchmark"])
    bench = _job_entry(world, entry, job, CreateJob(1, cc, role="benchmark", shards=shards, failed=failed), actions,
                       f"benchmark Job{where}", _asks(spec, cc), lambda e, j: None)
    if bench.phase == "Succeeded":
        bench.progress = "timed the baseline and every passed candidate in interleaved rounds"
        group.result = job
    elif bench.phase == "Failed":
        kind = _failure_kind(job) if job is not None and job.exit_code == EXIT_BAD_INPUT else "WorkerFailed"
        group.failure = (kind, f"benchmark Job{where}: {bench.reason}")
    group.benchmark = bench
    return group


def _stuck(entries: list[ShardStatus], shards: int) -> list[str]:
    """One clause per Job whose pod the scheduler cannot place."""
    out = []
    for e in entries:
        if e.phase == "Unschedulable":
            what = f"build Job {e.shard}/{shards}" if e.shard else "benchmark Job"
            out.append(f"{what}{f' ({e.architecture})' if e.architecture else ''}: {e.reason}")
    return out


def _plan_search(world: World, st: ModelOptimizationStatus, actions: list[Action], transition) -> None:
    """spec.search.parallelism > 1 (no architectures): build Jobs, then one benchmark Job on the target, whose
    result is read exactly like the single Job's."""
    gen, now, spec = world.generation, world.now, world.spec
    shards = shard_count(spec)
    group = _shard_group(world, st.search, None, shards, actions)
    st.search = SearchStatus(parallelism=spec.search.parallelism, builds=group.builds,
                             benchmarks=[group.benchmark] if group.benchmark else [])
    bench = group.benchmark
    if bench is not None and bench.job:
        st.job = JobState(name=bench.job, attempt=bench.attempt, generation=gen, started=bench.started,
                          finished=bench.finished, exit_code=bench.exit_code)
    line = group.line()
    if group.failure:
        kind, detail = group.failure
        for e in group.entries():
            if e.phase in ("Pending", "Unschedulable", "Running", "Retrying") and e.job:
                actions.append(DeleteJob(e.job, f"search failed: {detail}"[:200]))
        set_condition(st, "Validated", False, kind, detail[:1000], now, gen)
        set_condition(st, "Ready", False, kind, detail[:1000], now, gen)
        transition(Phase.failed, "search", f"nothing published: {detail}", ("Warning", kind))
        return
    stuck = _stuck(group.entries(), shards)
    if stuck:
        msg = "; ".join(stuck)
        set_condition(st, "Scheduled", False, "Unschedulable", msg[:1000], now, gen)
        set_condition(st, "Ready", False, "Unschedulable", f"search: {line}", now, gen)
        transition(Phase.pending, "scheduling", f"search: {line}; {msg}"[:1000], ("Warning", "WorkerUnschedulable"))
        return
    if (c := condition(st, "Scheduled")) is not None and c.status == "False":
        set_condition(st, "Scheduled", True, "Scheduled", "every search Job's pod placed", now, gen)
    if group.result is None:
        set_condition(st, "Validated", None, "Optimizing", f"search: {line}", now, gen)
        set_condition(st, "Ready", False, "Optimizing", "optimization in progress", now, gen)
        retrying = any(e.phase == "Retrying" for e in group.entries())  # stage retry: the operator's timer comes back
        transition(Phase.optimizing, "retry" if retrying else "search", f"search: {line}",
                   ("Warning", "JobFailed") if retrying else ("Normal", "JobCreated"))
        return
    _collect(world, st, actions, transition, group.result, st.job or JobState(generation=gen))


def _plan_architectures(world: World, st: ModelOptimizationStatus, actions: list[Action], transition) -> None:
    """One Job per architecture (or, with spec.search.parallelism > 1, that architecture's build Jobs and its
    benchmark Job), then (all finished) one choice across them, then the publish Job."""
    gen, now, spec = world.generation, world.now, world.spec
    mine = [j for j in world.jobs if j.generation == gen]
    old = {a.compute_capability: a for a in st.architectures}
    entries, search = [], None
    for a in architectures_of(spec):
        cc = a.compute_capability
        prev = old.get(cc) or ArchitectureStatus(compute_capability=cc)
        shards = shard_count(spec, cc)
        if shards == 1:
            job = _latest([j for j in mine if j.architecture == cc and j.component == "worker"])
            entries.append(_job_entry(world, prev, job, CreateJob(1, cc), actions,
                                      f"build Job for compute capability {cc}", _asks(spec, cc), _arch_result))
            continue
        search = search or SearchStatus(parallelism=spec.search.parallelism)
        group = _shard_group(world, st.search, cc, shards, actions)
        search.builds += group.builds
        search.benchmarks += [group.benchmark] if group.benchmark else []
        entries.append(_arch_from_group(prev, group, shards))
    st.architectures, st.search = entries, search
    line = ", ".join(f"{e.compute_capability} {e.phase}" for e in entries)

    failed = [e for e in entries if e.phase == "Failed"]
    if failed:
        detail = "; ".join(f"architecture {e.compute_capability}: {e.reason}" for e in failed)
        running = [e.job for e in entries if e.phase in ("Pending", "Unschedulable", "Running") and e.job]
        running += [b.job for b in (search.builds + search.benchmarks if search else [])
                    if b.phase in ("Pending", "Unschedulable", "Running", "Retrying") and b.job]
        for name in dict.fromkeys(running):
            actions.append(DeleteJob(name, f"architecture {failed[0].compute_capability} failed"))
        set_condition(st, "Validated", False, "ArchitectureFailed", detail, now, gen)
        set_condition(st, "Ready", False, "ArchitectureFailed", f"nothing published: {detail}"[:1000], now, gen)
        transition(Phase.failed, "architectures", f"nothing published: {detail}", ("Warning", "ArchitectureFailed"))
        return
    stuck = [e for e in entries if e.phase == "Unschedulable"]
    if stuck:
        msg = "; ".join(f"architecture {e.compute_capability}: {e.reason}" for e in stuck)
        set_condition(st, "Scheduled", False, "Unschedulable", msg, now, gen)
        set_condition(st, "Ready", False, "Unschedulable", f"architectures: {line}", now, gen)
        transition(Phase.pending, "scheduling", f"architectures: {line}; {msg}", ("Warning", "WorkerUnschedulable"))
        return
    if (c := condition(st, "Scheduled")) is not None and c.status == "False":
        set_condition(st, "Scheduled", True, "Scheduled", "every architecture's worker pod placed", now, gen)
    if any(e.phase != "Succeeded" for e in entries):
        set_condition(st, "Validated", None, "Optimizing", f"architectures: {line}", now, gen)
        set_condition(st, "Ready", False, "Optimizing", "optimization in progress", now, gen)
        retrying = any(e.phase == "Retrying" for e in entries)  # stage retry: the operator's timer comes back
        transition(Phase.optimizing, "retry" if retrying else "architectures", f"architectures: {line}",
                   ("Warning", "JobFailed") if retrying else ("Normal", "JobCreated"))
        return

    choice = choose_across({e.compute_capability: e.candidates for e in entries})
    st.candidates, st.winner, st.selection = choice.candidates, choice.winner, choice.reason
    win = next((c for c in choice.candidates if c.name == choice.winner), None)
    st.speedup, st.accuracy_drop = _fmt_speedup(win), _fmt_drop(win)
    summary = (f"{sum(c.verdict == 'passed' for c in choice.candidates)}/{len(choice.candidates)} candidates "
               f"within budget on every architecture ({', '.join(e.compute_capability for e in entries)})")
    if win is None:
        set_condition(st, "Validated", False, "NoCandidateInBudget", f"{summary}: {choice.reason}"[:1000], now, gen)
        set_condition(st, "Ready", False, "NoCandidateInBudget", choice.reason[:1000], now, gen)
        transition(Phase.rejected, "select", f"{summary}; {choice.reason}", ("Warning", "NoCandidateInBudget"))
        return
    set_condition(st, "Validated", True, "CandidateSelected", f"{summary}; {choice.reason}"[:1000], now, gen)
    if spec.publish is None:
        _published(world, st, actions, transition, win.name, None, summary)
        return
    pj = _latest([j for j in mine if j.publisher])
    if pj is None:
        if st.publish_job is None or st.publish_job.generation != gen:
            st.publish_job = JobState(attempt=1, generation=gen, started=_ts(now))
        actions.append(CreatePublishJob(win.name, st.publish_job.attempt))
        transition(Phase.publishing, "publish", f"{choice.reason}; publish Job created", ("Normal", "JobCreated"))
        return
    st.publish_job = JobState(name=pj.name, attempt=pj.attempt, generation=gen, started=pj.started,
                              finished=pj.finished, exit_code=pj.exit_code)
    if pj.state == "active":
        transition(Phase.publishing, "publish", f"publishing {win.name}: Job {pj.name} running")
        return
    if pj.state == "succeeded":
        try:
            pub = parse_result(pj.message or "")["published"]
            Published.model_validate(pub)
        except (ValueError, KeyError, TypeError) as err:
            pub, why = None, f"publish Job {pj.name} finished but its result is unreadable: {err}"
        if pub:
            _published(world, st, actions, transition, win.name, pub, summary)
            return
    else:
        why = _failure_detail(pj, world.spec)
    st.publish_job.log_tail = (pj.log_tail or pj.message or "")[-LOG_TAIL:] or None
    set_condition(st, "Published", False, "PublishFailed", why[:1000], now, gen)
    set_condition(st, "Ready", False, "PublishFailed", why[:1000], now, gen)
    transition(Phase.failed, "publish", f"winner {win.name} not published: {why}", ("Warning", "PublishFailed"))


def _arch_from_group(prev: ArchitectureStatus, group: Group, shards: int) -> ArchitectureStatus:
    """An architecture whose search is split: its phase is its Jobs' (its benchmark Job's once created), what it
    found is its benchmark Job's result."""
    e = prev.model_copy(deep=True)
    if group.failure:
        e.phase, e.verdict, e.reason = "Failed", "failed", group.failure[1]
        return e
    bench = group.benchmark
    if bench is None:
        phases = [b.phase for b in group.builds]
        e.phase = next((p for p in ("Unschedulable", "Retrying", "Running") if p in phases), "Pending")
        e.reason = group.line()
        if e.phase == "Unschedulable":
            e.reason = "; ".join(_stuck(group.builds, shards))
        return e
    e.job, e.attempt, e.started, e.finished, e.exit_code = (bench.job, bench.attempt, bench.started, bench.finished,
                                                            bench.exit_code)
    e.phase, e.reason, e.next_retry = bench.phase, bench.reason, bench.next_retry
    if bench.phase == "Succeeded" and group.result is not None:
        _arch_result(e, group.result)
    return e


def job_create_refused(st: ModelOptimizationStatus, attempt: int, error: str, now: datetime, gen: int
                       ) -> list[Action]:
    """The API server refused the worker Job (a quota, an admission policy, a webhook): say so in
    status and try again on the timer. The attempt is kept, not used up: no worker ran."""
    message = f"could not create the worker Job (attempt {attempt}): {error}; retrying"
    repeated = st.stage == "retry" and st.phase == Phase.pending and st.message == message
    st.job = JobState(attempt=attempt, generation=gen)
    st.phase, st.stage, st.message = Phase.pending, "retry", message
    set_condition(st, "Ready", False, "JobCreateRefused", message, now, gen)
    return [] if repeated else [Event("Warning", "JobCreateRefused", message)]


def _failure_kind(job: ObservedJob) -> str:
    """The worker's own reason for a bad-input exit (StorageNotFound, StorageAccessDenied, ...)."""
    try:
        kind = parse_result(job.message or "").get("kind")
    except ValueError:
        kind = None
    return kind if isinstance(kind, str) and kind.isidentifier() and kind != "Crash" else "InvalidInput"


def _failure_detail(job: ObservedJob, spec: ModelOptimizationSpec | None = None) -> str:
    parts = [f"Job {job.name}"]
    if job.exit_code is not None:
        parts.append(f"exit code {job.exit_code}")
    if job.reason:
        parts.append(job.reason)
    killed = killed_detail(job.exit_code, job.container_reason, job.memory_limit, job.log_tail or job.message,
                           spec.target.batch_sizes if spec is not None else None)
    if killed:  # the log's last line would only say where it was, not that the kernel stopped it
        return f"{parts[0]}: {killed}"
    try:
        doc = parse_result(job.message or "")
        if "error" in doc:
            parts.append(f"{doc.get('stage', 'worker')}: {doc['error']}")
    except ValueError:
        if job.message:
            parts.append(job.message.strip().splitlines()[-1][:300])
    return ", ".join(parts)
