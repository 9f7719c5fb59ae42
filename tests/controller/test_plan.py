"""The reconcile state machine, as the pure function it is."""

import json
from datetime import UTC, datetime, timedelta

from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import CandidateResult, ModelOptimizationStatus, RolloutStatus, WorkerResult
from lathe.controller.plan import (
    AbandonRollout,
    CreateJob,
    DeleteJob,
    Event,
    ObservedJob,
    Policy,
    Requeue,
    World,
    job_create_refused,
    plan,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SPEC = ModelOptimizationSpec.model_validate({"model": {"uri": "pvc://m/model.onnx"},
                                             "data": {"validation": {"uri": "pvc://m/val.npz"}}})


def world(status=None, jobs=(), generation=1, problems=(), now=NOW, spec=SPEC):
    return World(generation=generation, spec=spec, problems=list(problems),
                 status=status or ModelOptimizationStatus(), jobs=list(jobs), now=now,
                 policy=Policy(max_attempts=3, backoff_seconds=10))


def result_message(winner=True):
    base = CandidateResult(name="baseline", verdict="baseline", accuracy=0.98, p50_ms=2.0)
    cands = [CandidateResult(name="int8", runtime="onnxruntime", verdict="passed" if winner else "rejected",
                             reason="" if winner else "top1 drop 0.2 > 0.01", accuracy=0.975,
                             accuracy_drop=0.005, p50_ms=1.0, speedup=2.0),
             CandidateResult(name="fp16", runtime="onnxruntime", verdict="rejected", reason="slower: 0.8x < 1.0x")]
    return WorkerResult(metric="top1", baseline=base, candidates=cands, winner="int8" if winner else None).compact()


def kinds(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def test_invalid_spec_fails_without_a_job():
    p = plan(world(problems=["spec.candidates[0].passes[0].type: unknown pass 'foo'"]))
    assert p.status.phase == "Failed"
    assert not kinds(p.actions, CreateJob)
    cond = {c.type: c for c in p.status.conditions}["Validated"]
    assert cond.status == "False" and cond.reason == "InvalidSpec" and "passes[0].type" in cond.message
    assert kinds(p.actions, Event)[0].reason == "InvalidSpec"


def test_first_pass_creates_attempt_one_and_records_generation():
    p = plan(world())
    assert kinds(p.actions, CreateJob) == [CreateJob(1)]
    assert p.status.phase == "Optimizing" and p.status.observed_generation == 1 and p.status.job.attempt == 1


def test_create_is_reissued_until_the_job_is_seen_but_not_duplicated():
    first = plan(world()).status
    again = plan(world(status=first))
    assert kinds(again.actions, CreateJob) == [CreateJob(1)]  # idempotent re-issue: same name, 409 at worst
    assert not kinds(again.actions, Event)  # no second transition event


def test_success_writes_the_story_and_the_winner():
    st = plan(world()).status
    job = ObservedJob("x-g1-a1", 1, 1, "succeeded", exit_code=0, message=result_message())
    p = plan(world(status=st, jobs=[job]))
    assert p.status.phase == "Succeeded" and p.status.winner == "int8"
    assert p.status.speedup == "2.00x" and p.status.accuracy_drop == "0.0050"
    assert [c.name for c in p.status.candidates] == ["int8", "fp16"]
    assert p.status.candidates[1].reason.startswith("slower")
    conds = {c.type: c.status for c in p.status.conditions}
    assert conds["Validated"] == "True" and conds["Ready"] == "True"
    # A restart (same status, same Job) changes nothing and creates nothing.
    again = plan(world(status=p.status, jobs=[job]))
    assert again.actions == [] and again.status == p.status


def test_no_candidate_in_budget_is_rejected_not_failed():
    st = plan(world()).status
    job = ObservedJob("x-g1-a1", 1, 1, "succeeded", exit_code=0, message=result_message(winner=False))
    p = plan(world(status=st, jobs=[job]))
    assert p.status.phase == "Rejected" and p.status.winner is None
    cond = {c.type: c for c in p.status.conditions}["Validated"]
    assert cond.reason == "NoCandidateInBudget" and "top1 drop 0.2" in cond.message


def test_crash_retries_with_backoff_then_gives_up():
    st = plan(world()).status
    failed1 = ObservedJob("x-g1-a1", 1, 1, "failed", exit_code=1, message='{"error":"boom","stage":"benchmark"}')
    p = plan(world(status=st, jobs=[failed1]))
    assert p.status.stage == "retry" and kinds(p.actions, Requeue) == [Requeue(10.0)]
    assert not kinds(p.actions, CreateJob) and "benchmark: boom" in p.status.message
    # Before the backoff is over nothing is created, and the deadline does not move.
    early = plan(world(status=p.status, jobs=[failed1], now=NOW + timedelta(seconds=5)))
    assert not kinds(early.actions, CreateJob) and early.status.job.next_retry == p.status.job.next_retry
    due = plan(world(status=p.status, jobs=[failed1], now=NOW + timedelta(seconds=11)))
    assert kinds(due.actions, CreateJob) == [CreateJob(2)]
    failed2 = ObservedJob("x-g1-a2", 1, 2, "failed", exit_code=1, message="oops")
    p2 = plan(world(status=due.status, jobs=[failed1, failed2], now=NOW + timedelta(seconds=12)))
    assert kinds(p2.actions, Requeue) == [Requeue(20.0)]  # exponential
    due2 = plan(world(status=p2.status, jobs=[failed1, failed2], now=NOW + timedelta(seconds=40)))
    failed3 = ObservedJob("x-g1-a3", 1, 3, "failed", exit_code=137, log_tail="Killed")
    last = plan(world(status=due2.status, jobs=[failed1, failed2, failed3], now=NOW + timedelta(seconds=41)))
    assert last.status.phase == "Failed" and not kinds(last.actions, CreateJob)
    assert last.status.job.exit_code == 137 and last.status.job.log_tail == "Killed"
    assert {c.type: c.reason for c in last.status.conditions}["Ready"] == "WorkerFailed"


def test_bad_input_is_not_retried():
    st = plan(world()).status
    job = ObservedJob("x-g1-a1", 1, 1, "failed", exit_code=2,
                      message=json.dumps({"error": "model.onnx: not an ONNX model", "stage": "intake",
                                          "kind": "InvalidInput"}))
    p = plan(world(status=st, jobs=[job]))
    assert p.status.phase == "Failed" and not kinds(p.actions, CreateJob) and not kinds(p.actions, Requeue)
    assert "model.onnx: not an ONNX model" in p.status.message


def test_spec_change_supersedes_running_job():
    st = plan(world()).status
    running = ObservedJob("x-g1-a1", 1, 1, "active")
    p = plan(world(status=st, jobs=[running], generation=2))
    assert kinds(p.actions, DeleteJob) == [DeleteJob("x-g1-a1", "superseded by generation 2")]
    assert kinds(p.actions, CreateJob) == [CreateJob(1)]
    assert p.status.observed_generation == 2 and p.status.job.generation == 2
    assert any(e.reason == "SpecChanged" for e in kinds(p.actions, Event))


def test_unreadable_result_fails_clearly():
    st = plan(world()).status
    job = ObservedJob("x-g1-a1", 1, 1, "succeeded", exit_code=0, message="not json")
    p = plan(world(status=st, jobs=[job]))
    assert p.status.phase == "Failed" and "unreadable" in p.status.message


def test_refused_create_keeps_the_attempt_and_is_reissued():
    p = plan(world())
    [create] = kinds(p.actions, CreateJob)
    events = job_create_refused(p.status, create.attempt, "403 exceeded quota", NOW, 1)
    assert p.status.phase == "Pending" and p.status.stage == "retry" and "exceeded quota" in p.status.message
    assert [e.reason for e in events] == ["JobCreateRefused"]
    # The same refusal again: no second event; the next pass issues the same attempt again.
    assert job_create_refused(p.status, create.attempt, "403 exceeded quota", NOW, 1) == []
    again = plan(world(status=p.status, now=NOW + timedelta(seconds=5)))
    assert [a.attempt for a in kinds(again.actions, CreateJob)] == [1]
    assert again.status.phase == "Optimizing"


def test_spec_change_mid_canary_abandons_it():
    canary = RolloutStatus(state="Progressing", stable_version=2, canary_version=3, step=0,
                           weights={"2": 70, "3": 30})
    st = ModelOptimizationStatus(observed_generation=1, phase="RollingOut", stage="rollout", rollout=canary)
    p = plan(world(status=st, generation=2))
    [abandon] = kinds(p.actions, AbandonRollout)
    assert abandon.rollout.canary_version == 3 and abandon.rollout.stable_version == 2
    assert p.status.rollout.state == "RolledBack" and "generation 2" in p.status.rollout.reason
    assert "back to version 2" in p.status.rollout.reason
    assert "RolloutAbandoned" in [e.reason for e in kinds(p.actions, Event)]
    assert kinds(p.actions, CreateJob) and p.status.phase == "Optimizing"
    # A finished rollout is history, not something to undo.
    done = ModelOptimizationStatus(observed_generation=1, phase="Succeeded", stage="done",
                                   rollout=canary.model_copy(update={"state": "Promoted"}))
    p = plan(world(status=done, generation=2))
    assert not kinds(p.actions, AbandonRollout) and p.status.rollout is None


def test_a_worker_pod_nothing_can_place_says_so_and_clears_once_placed():
    gpu = ModelOptimizationSpec.model_validate({**SPEC.model_dump(by_alias=True, exclude_none=True),
                                                "target": {"device": "gpu"}})
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available"
    stuck = ObservedJob("x-g1-a1", 1, 1, "active", pod="x-g1-a1-abcde", unschedulable=msg)
    first = plan(world(ModelOptimizationStatus(observed_generation=1), [stuck], spec=gpu))
    st = first.status
    assert st.phase == "Pending" and st.stage == "scheduling"
    cond = {c.type: c for c in st.conditions}["Scheduled"]
    assert cond.status == "False" and cond.reason == "Unschedulable"
    assert cond.message == f"worker pod x-g1-a1-abcde cannot be scheduled (1 nvidia.com/gpu): {msg}"
    assert [e.reason for e in kinds(first.actions, Event)] == ["WorkerUnschedulable"]
    again = plan(world(st, [stuck], spec=gpu))  # the next pending-pod event: no second Warning
    assert kinds(again.actions, Event) == [] and again.status.stage == "scheduling"
    placed = plan(world(again.status, [ObservedJob("x-g1-a1", 1, 1, "active")], spec=gpu))
    assert placed.status.phase == "Optimizing"
    assert {c.type: c for c in placed.status.conditions}["Scheduled"].status == "True"
