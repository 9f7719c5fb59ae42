"""One build Job per GPU architecture, one choice across them, one publish Job: the pure state machine."""

import json
from datetime import UTC, datetime, timedelta

from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import CandidateResult, ModelOptimizationStatus, WorkerResult
from lathe.controller.plan import (
    CreateJob,
    CreatePublishJob,
    DeleteJob,
    ObservedJob,
    Policy,
    Requeue,
    World,
    choose_across,
    plan,
)
from lathe.controller.validate import problems

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def gpu_spec(publish=True, artifacts="pvc://scratch/lathe"):
    doc = {"model": {"uri": "pvc://m/model.onnx"}, "data": {"validation": {"uri": "pvc://m/val.npz"}},
           "target": {"device": "gpu", "runtimes": ["tensorrt"],
                      "gpu": {"architectures": [{"computeCapability": "8.9", "product": "NVIDIA-L4"},
                                                {"computeCapability": "9.0"}]}}}
    if artifacts:
        doc["artifacts"] = artifacts
    if publish:
        doc["publish"] = {"repository": "pvc://triton/", "modelName": "digits"}
    return ModelOptimizationSpec.model_validate(doc)


SPEC = gpu_spec()


def world(status=None, jobs=(), spec=SPEC):
    return World(generation=1, spec=spec, problems=[], status=status or ModelOptimizationStatus(), jobs=list(jobs),
                 now=NOW, policy=Policy(max_attempts=3, backoff_seconds=10))


def cand(name, verdict, speedup, reason=""):
    return CandidateResult(name=name, runtime="tensorrt", verdict=verdict, speedup=speedup, reason=reason,
                           accuracy_drop=0.001)


def result(*cands):
    winner = max((c for c in cands if c.verdict == "passed"), key=lambda c: c.speedup, default=None)
    return WorkerResult(metric="top1", baseline=CandidateResult(name="baseline", verdict="baseline"),
                        candidates=list(cands), winner=winner.name if winner else None).compact()


def job(cc, state="active", message=None, attempt=1, **kw):
    return ObservedJob(name=f"d-g1-a{attempt}-sm{cc.replace('.', '')}", generation=1, attempt=attempt, state=state,
                       message=message, architecture=cc, **kw)


def test_first_pass_creates_one_job_per_architecture():
    p = plan(world())
    assert [(a.architecture, a.attempt) for a in p.actions if isinstance(a, CreateJob)] == [("8.9", 1), ("9.0", 1)]
    assert [(a.compute_capability, a.phase) for a in p.status.architectures] == [("8.9", "Pending"), ("9.0", "Pending")]
    assert p.status.phase == "Optimizing" and "8.9 Pending, 9.0 Pending" in p.status.message


def test_status_says_which_architecture_is_done_running_or_pending():
    jobs = [job("8.9", "succeeded", result(cand("fp16", "passed", 1.8))), job("9.0", ready=1)]
    p = plan(world(jobs=jobs))
    assert not [a for a in p.actions if isinstance(a, CreateJob | CreatePublishJob)]
    e89, e90 = p.status.architectures
    assert (e89.phase, e89.verdict, e89.winner, e89.job) == ("Succeeded", "passed", "fp16", "d-g1-a1-sm89")
    assert (e90.phase, e90.verdict) == ("Running", None)
    assert p.status.message == "architectures: 8.9 Succeeded, 9.0 Running"


def test_an_unschedulable_pod_is_named_by_its_architecture():
    msg = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    p = plan(world(jobs=[job("8.9", pod="d-g1-a1-sm89-x", unschedulable=msg), job("9.0")]))
    cond = {c.type: c for c in p.status.conditions}["Scheduled"]
    assert cond.status == "False" and cond.reason == "Unschedulable"
    assert cond.message.startswith("architecture 8.9: worker pod d-g1-a1-sm89-x cannot be scheduled (1 nvidia.com/gpu")
    assert "'nvidia.com/gpu.compute.major': '8'" in cond.message and "NVIDIA-L4" in cond.message and msg in cond.message
    assert "9.0" not in cond.message
    assert p.status.phase == "Pending" and [a.phase for a in p.status.architectures] == ["Unschedulable", "Pending"]


def test_every_architecture_passed_publishes_the_best_worst_case():
    jobs = [job("8.9", "succeeded", result(cand("fp16", "passed", 1.9), cand("int8", "passed", 3.0))),
            job("9.0", "succeeded", result(cand("fp16", "passed", 1.7), cand("int8", "passed", 1.2)))]
    p = plan(world(jobs=jobs))
    # int8 is the 8.9 worker's own pick, but fp16's slowest architecture (1.7x) beats int8's (1.2x)
    assert [a.winner for a in p.status.architectures] == ["int8", "fp16"]
    assert p.status.winner == "fp16" and p.status.speedup == "1.70x"
    assert "best worst-case speedup, 1.70x on 9.0" in p.status.selection
    assert [a.candidate for a in p.actions if isinstance(a, CreatePublishJob)] == ["fp16"]
    assert p.status.phase == "Publishing"

    pub = {"repository": "pvc://triton/", "modelName": "digits", "version": 4, "flavour": "tensorrt",
           "sha256": "0" * 64, "candidate": "fp16"}
    done = ObservedJob(name="d-g1-a1-publish", generation=1, attempt=1, state="succeeded", publisher=True,
                       message=json.dumps({"published": pub}))
    p2 = plan(world(status=p.status, jobs=[*jobs, done]))
    assert p2.status.phase == "Succeeded" and p2.status.published.version == 4
    assert {c.type: c.status for c in p2.status.conditions}["Published"] == "True"


def test_nothing_published_when_no_candidate_passed_everywhere():
    jobs = [job("8.9", "succeeded", result(cand("fp16", "passed", 1.9), cand("int8", "rejected", 3.0, "drop 0.03"))),
            job("9.0", "succeeded", result(cand("fp16", "rejected", 0.9, "slower: 0.90x"), cand("int8", "passed", 2.0)))]
    p = plan(world(jobs=jobs))
    assert p.status.phase == "Rejected" and p.status.winner is None
    assert not [a for a in p.actions if isinstance(a, CreatePublishJob)]
    assert "no candidate passed on every architecture" in p.status.selection
    assert "fp16: rejected on 9.0: slower: 0.90x" in p.status.selection
    assert "int8: rejected on 8.9: drop 0.03" in p.status.selection


def test_an_architecture_with_no_passing_candidate_is_named():
    c = choose_across({"8.9": [cand("fp16", "passed", 1.5)], "9.0": [cand("fp16", "rejected", 0.8, "slower")]})
    assert c.winner is None and c.reason == "nothing published: no candidate within budget on architecture 9.0"


def test_a_failed_architecture_fails_the_resource_and_stops_the_others():
    jobs = [job("8.9", "failed", '{"stage":"build","error":"parser: unsupported op"}', attempt=3, exit_code=1),
            job("9.0")]  # 8.9's last attempt failed
    p = plan(world(jobs=jobs))
    assert p.status.phase == "Failed" and "architecture 8.9" in p.status.message
    assert "nothing published" in p.status.message and "unsupported op" in p.status.message
    assert [d.name for d in p.actions if isinstance(d, DeleteJob)] == ["d-g1-a1-sm90"]
    again = plan(world(status=p.status, jobs=jobs))  # terminal: a restart redoes nothing
    assert not [a for a in again.actions if isinstance(a, CreateJob | DeleteJob)]


def test_validation_requires_artifacts_with_architectures():
    found = problems(gpu_spec(artifacts=None))
    assert any(m.startswith("spec.artifacts: required with spec.target.gpu.architectures") for m in found), found
    assert not [m for m in problems(gpu_spec()) if "architectures" in m]
    s3 = problems(gpu_spec(artifacts="s3://bucket/x"))
    assert any(m.startswith("spec.artifacts: s3:// cannot hold") for m in s3), s3


def test_a_crashed_architecture_is_retried_with_backoff_alone():
    crashed = [job("8.9", "failed", "Traceback ... CUDA error", exit_code=1), job("9.0", ready=1)]
    p = plan(world(jobs=crashed))
    e89 = p.status.architectures[0]
    assert (e89.phase, e89.next_retry) == ("Retrying", "2026-12-02T12:00:10Z") and "attempt 1/3 failed" in e89.reason
    assert p.status.stage == "retry" and p.status.phase == "Optimizing"
    assert [r.seconds for r in p.actions if isinstance(r, Requeue)] == [10.0]
    assert not [a for a in p.actions if isinstance(a, CreateJob | DeleteJob)]
    later = plan(World(generation=1, spec=SPEC, problems=[], status=p.status, jobs=crashed,
                       now=NOW + timedelta(seconds=11), policy=Policy(max_attempts=3, backoff_seconds=10)))
    assert [(a.architecture, a.attempt) for a in later.actions if isinstance(a, CreateJob)] == [("8.9", 2)]
    assert later.status.architectures[0].attempt == 2 and later.status.architectures[0].phase == "Pending"
    again = plan(world(status=later.status, jobs=crashed))  # attempt 2 not visible yet: the create again
    assert [(a.architecture, a.attempt) for a in again.actions if isinstance(a, CreateJob)] == [("8.9", 2)]


def test_bad_input_on_one_architecture_is_not_retried():
    p = plan(world(jobs=[job("8.9", "failed", '{"stage":"fetch","error":"no such model"}', exit_code=2), job("9.0")]))
    assert p.status.phase == "Failed" and p.status.architectures[0].phase == "Failed"
    assert not [a for a in p.actions if isinstance(a, CreateJob)]
