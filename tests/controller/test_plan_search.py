"""A search split over build Jobs (spec.search.parallelism): the pure state machine, Job by Job."""

import json
from datetime import UTC, datetime, timedelta

from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import CandidateResult, ModelOptimizationStatus, WorkerResult
from lathe.controller.plan import (
    CreateJob,
    CreatePublishJob,
    DeleteJob,
    KeepReport,
    ObservedJob,
    Policy,
    Requeue,
    World,
    plan,
)
from lathe.controller.validate import problems

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
CANDS = [{"name": "ort", "passes": [{"type": "graph-optimize", "level": "all"}]},
         {"name": "int8", "passes": [{"type": "quantize", "precision": "int8", "mode": "static"}]},
         {"name": "pruned", "passes": [{"type": "prune", "method": "structured", "sparsity": 0.25}]}]


def make_spec(parallelism=2, candidates=CANDS, artifacts="pvc://scratch/lathe", **extra):
    doc = {"model": {"uri": "pvc://m/model.pt", "format": "torchscript",
                     "inputs": [{"name": "input", "shape": ["batch", 1, 8, 8]}]},
           "data": {"validation": {"uri": "pvc://m/val.npz"}},
           "target": {"runtimes": ["onnxruntime"], "nodeSelector": {"pool": "target"}},
           "candidates": candidates, "search": {"parallelism": parallelism}, **extra}
    if artifacts:
        doc["artifacts"] = artifacts
    return ModelOptimizationSpec.model_validate(doc)


SPEC = make_spec()


def world(status=None, jobs=(), spec=SPEC, now=NOW):
    return World(generation=1, spec=spec, problems=[], status=status or ModelOptimizationStatus(), jobs=list(jobs),
                 now=now, policy=Policy(max_attempts=2, backoff_seconds=10))


def build(k, state="active", message=None, attempt=1, **kw):
    return ObservedJob(name=f"d-g1-a{attempt}-b{k}", generation=1, attempt=attempt, state=state, message=message,
                       component="builder", shard=k, **kw)


def built(*names, failed=()):
    return json.dumps({"shard": 1, "shards": 2, "candidates": [
        {"name": n, "verdict": "failed" if n in failed else "passed", "reason": "crash: boom" if n in failed else ""}
        for n in names]})


def bench(state="active", message=None, attempt=1, **kw):
    return ObservedJob(name=f"d-g1-a{attempt}-bench", generation=1, attempt=attempt, state=state, message=message,
                       component="benchmark", **kw)


def creates(p):
    return [(a.role, a.shard, a.attempt, a.failed) for a in p.actions if isinstance(a, CreateJob)]


def test_two_build_jobs_longest_first_each_named_in_status():
    p = plan(world())
    assert creates(p) == [("build", 1, 1, ()), ("build", 2, 1, ())]
    builds = p.status.search.builds
    assert [(b.shard, b.candidates, b.phase) for b in builds] == [(1, ["pruned"], "Pending"),
                                                                 (2, ["int8", "ort"], "Pending")]
    assert p.status.search.parallelism == 2 and p.status.search.benchmarks == []
    assert (p.status.phase, p.status.stage) == ("Optimizing", "search")
    assert p.status.message == "search: builds 2 Pending"


def test_running_builds_show_node_and_progress_and_no_benchmark_yet():
    jobs = [build(1, ready=1, node="big-1", progress="[candidates]  50%, ETA 9s building pruned"),
            build(2, "succeeded", built("int8", "ort"), node="big-2")]
    p = plan(world(jobs=jobs))
    b1, b2 = p.status.search.builds
    assert (b1.phase, b1.node, b1.progress) == ("Running", "big-1", "[candidates]  50%, ETA 9s building pruned")
    assert (b2.phase, b2.node, b2.candidates) == ("Succeeded", "big-2", ["int8", "ort"])
    assert b2.progress == "handed over 2 candidate(s): 2 built and validated"
    assert not creates(p) and p.status.message == "search: builds 1 Running, 1 Succeeded"


def test_all_builds_done_start_one_benchmark_job():
    jobs = [build(1, "succeeded", built("pruned")), build(2, "succeeded", built("int8", "ort"))]
    p = plan(world(jobs=jobs))
    assert creates(p) == [("benchmark", None, 1, ())]
    (b,) = p.status.search.benchmarks
    assert b.candidates == ["pruned", "int8", "ort"] and b.phase == "Pending"
    again = plan(world(status=p.status, jobs=jobs))  # a restart before the Job is visible: the same create
    assert creates(again) == [("benchmark", None, 1, ())]


def test_a_failed_build_fails_only_its_candidates_after_its_own_retries():
    crashed = [build(1, "failed", "Traceback: killed", exit_code=137, reason="OOMKilled"),
               build(2, "succeeded", built("int8", "ort"))]
    p = plan(world(jobs=crashed))
    b1 = p.status.search.builds[0]
    assert b1.phase == "Retrying" and b1.next_retry == "2026-12-03T12:00:10Z" and p.status.stage == "retry"
    assert [r.seconds for r in p.actions if isinstance(r, Requeue)] == [10.0] and not creates(p)
    later = plan(world(status=p.status, jobs=crashed, now=NOW + timedelta(seconds=11)))
    assert creates(later) == [("build", 1, 2, ())]  # only that Job, attempt 2
    gone = [build(1, "failed", "Traceback: killed", attempt=2, exit_code=137), crashed[1]]
    last = plan(world(status=later.status, jobs=[crashed[0], *gone]))
    assert last.status.search.builds[0].phase == "Failed"
    ((role, shard, attempt, failed),) = creates(last)
    assert (role, shard, attempt) == ("benchmark", None, 1)
    assert failed[0][0] == 1 and "gave up after 2 attempts" in failed[0][1] and "exit code 137" in failed[0][1]
    assert last.status.phase == "Optimizing"


def test_bad_input_in_a_build_fails_the_search_and_stops_the_rest():
    jobs = [build(1, "failed", '{"stage":"intake","error":"not an ONNX model","kind":"InvalidInput"}', exit_code=2),
            build(2, ready=1)]
    p = plan(world(jobs=jobs))
    assert p.status.phase == "Failed" and p.status.stage == "search"
    assert "build Job 1/2" in p.status.message and "not an ONNX model" in p.status.message
    assert [d.name for d in p.actions if isinstance(d, DeleteJob)] == ["d-g1-a1-b2"]
    assert {c.type: c.reason for c in p.status.conditions}["Ready"] == "InvalidInput"
    again = plan(world(status=p.status, jobs=jobs))  # terminal
    assert not creates(again) and not [a for a in again.actions if isinstance(a, DeleteJob)]


def test_every_build_failed_is_a_failed_search_without_benchmark():
    jobs = [build(k, "failed", "segfault", attempt=2, exit_code=139) for k in (1, 2)]
    st = plan(world()).status
    for b in st.search.builds:
        b.attempt = 2
    p = plan(world(status=st, jobs=jobs))
    assert p.status.phase == "Failed" and "every build Job failed" in p.status.message and not creates(p)


def result(winner="int8"):
    cands = [CandidateResult(name=n, runtime="onnxruntime", verdict="passed", speedup=s, accuracy_drop=0.001)
             for n, s in (("pruned", 1.2), ("int8", 1.5), ("ort", 1.05))]
    return WorkerResult(metric="top1", baseline=CandidateResult(name="baseline", verdict="baseline", accuracy=0.98),
                        candidates=cands, winner=winner, selection="int8: fastest").compact()


def test_the_benchmark_result_reads_exactly_like_a_single_job():
    jobs = [build(1, "succeeded", built("pruned")), build(2, "succeeded", built("int8", "ort")),
            bench("succeeded", result(), pod="d-g1-a1-bench-x", node="target-1")]
    st = plan(world(jobs=jobs[:2])).status
    p = plan(world(status=st, jobs=jobs))
    s = p.status
    assert (s.phase, s.winner, s.speedup, s.selection) == ("Succeeded", "int8", "1.50x", "int8: fastest")
    assert [c.name for c in s.candidates] == ["pruned", "int8", "ort"] and s.baseline.accuracy == 0.98
    assert [a.job for a in p.actions if isinstance(a, KeepReport)] == ["d-g1-a1-bench"]
    assert s.job.name == "d-g1-a1-bench" and s.search.benchmarks[0].node == "target-1"
    assert s.search.benchmarks[0].phase == "Succeeded"
    again = plan(world(status=s, jobs=jobs))  # a restart: nothing new
    assert not creates(again) and not [a for a in again.actions if isinstance(a, KeepReport)]


def test_an_unschedulable_build_job_says_where_the_builders_asked_to_go():
    spec = make_spec(search={"parallelism": 2, "builders": {"nodeSelector": {"pool": "big-cpu"},
                                                            "resources": {"requests": {"cpu": "8"}}}})
    msg = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    p = plan(world(spec=spec, jobs=[build(1, pod="d-g1-a1-b1-x", unschedulable=msg), build(2)]))
    cond = {c.type: c for c in p.status.conditions}["Scheduled"]
    assert cond.status == "False" and cond.message.startswith("build Job 1/2: worker pod d-g1-a1-b1-x cannot be")
    assert "nodeSelector {'pool': 'big-cpu'}" in cond.message and "cpu=8" in cond.message and msg in cond.message
    assert p.status.phase == "Pending" and p.status.search.builds[0].phase == "Unschedulable"


def test_the_default_search_gets_at_most_as_many_jobs_as_any_family_has_candidates():
    torchscript = make_spec(parallelism=8, candidates=[])  # every family: 4 default candidates (prune needs torch)
    assert [c[1] for c in creates(plan(world(spec=torchscript)))] == [1, 2, 3, 4]
    onnx = ModelOptimizationSpec.model_validate({**torchscript.model_dump(by_alias=True, exclude_none=True),
                                                 "model": {"uri": "pvc://m/model.onnx"}})
    p = plan(world(spec=onnx))  # a CNN gets 2 (ort-optimized, int8-static), a transformer 4: 2 Jobs
    assert [c[1] for c in creates(p)] == [1, 2]
    assert all(b.candidates == [] and "after intake" in b.progress for b in p.status.search.builds)


def test_parallelism_one_is_the_single_job_and_needs_no_artifacts():
    spec = make_spec(parallelism=1, artifacts=None)
    p = plan(world(spec=spec))
    assert [(a.role, a.attempt) for a in p.actions if isinstance(a, CreateJob)] == [("worker", 1)]
    assert p.status.search is None and not [m for m in problems(spec) if "search" in m]


def test_parallelism_above_one_needs_artifacts_by_field():
    found = problems(make_spec(artifacts=None))
    assert any(m.startswith("spec.artifacts: required with spec.search.parallelism 2") for m in found), found
    assert not [m for m in problems(make_spec()) if "spec.artifacts" in m]


def gpu_spec():
    return ModelOptimizationSpec.model_validate({
        "model": {"uri": "pvc://m/model.onnx"}, "data": {"validation": {"uri": "pvc://m/val.npz"}},
        "target": {"device": "gpu", "runtimes": ["tensorrt"],
                   "gpu": {"architectures": [{"computeCapability": "8.9"}, {"computeCapability": "9.0"}]}},
        "search": {"parallelism": 2}, "artifacts": "pvc://scratch/lathe",
        "publish": {"repository": "pvc://triton/", "modelName": "digits"}})


def arch_build(cc, k, state="active", message=None, **kw):
    return ObservedJob(name=f"d-g1-a1-sm{cc.replace('.', '')}-b{k}", generation=1, attempt=1, state=state,
                       message=message, component="builder", shard=k, architecture=cc, **kw)


def arch_bench(cc, state="active", message=None):
    return ObservedJob(name=f"d-g1-a1-sm{cc.replace('.', '')}-bench", generation=1, attempt=1, state=state,
                       message=message, component="benchmark", architecture=cc)


def test_architectures_times_shards_then_one_benchmark_per_architecture_then_the_choice():
    spec = gpu_spec()
    p = plan(world(spec=spec))
    assert [(a.architecture, a.role, a.shard) for a in p.actions if isinstance(a, CreateJob)] == [
        ("8.9", "build", 1), ("8.9", "build", 2), ("9.0", "build", 1), ("9.0", "build", 2)]
    assert [(a.compute_capability, a.phase) for a in p.status.architectures] == [("8.9", "Pending"), ("9.0", "Pending")]
    builds = [arch_build(cc, k, "succeeded", built(*(["trt-fp16", "trt-int8"] if k == 1 else ["trt-bf16", "trt-fp8"])))
              for cc in ("8.9", "9.0") for k in (1, 2)]
    p2 = plan(world(spec=spec, status=p.status, jobs=builds))
    assert [(a.architecture, a.role) for a in p2.actions if isinstance(a, CreateJob)] == [
        ("8.9", "benchmark"), ("9.0", "benchmark")]

    def res(fast):
        cands = [CandidateResult(name=n, runtime="tensorrt", verdict="passed", speedup=s) for n, s in fast.items()]
        return WorkerResult(metric="top1", baseline=CandidateResult(name="baseline", verdict="baseline"),
                            candidates=cands, winner=max(fast, key=fast.get)).compact()
    benches = [arch_bench("8.9", "succeeded", res({"trt-fp16": 1.9, "trt-int8": 3.0})),
               arch_bench("9.0", "succeeded", res({"trt-fp16": 1.7, "trt-int8": 1.2}))]
    p3 = plan(world(spec=spec, status=p2.status, jobs=builds + benches))
    assert [(a.compute_capability, a.phase, a.winner, a.job) for a in p3.status.architectures] == [
        ("8.9", "Succeeded", "trt-int8", "d-g1-a1-sm89-bench"), ("9.0", "Succeeded", "trt-fp16", "d-g1-a1-sm90-bench")]
    assert p3.status.winner == "trt-fp16" and [a.candidate for a in p3.actions if isinstance(a, CreatePublishJob)] == [
        "trt-fp16"]
    assert len(p3.status.search.builds) == 4 and len(p3.status.search.benchmarks) == 2


def test_a_spec_change_mid_search_stops_the_old_jobs_and_starts_over():
    old = [build(1, ready=1), build(2, "succeeded", built("int8", "ort"))]
    st = plan(world(jobs=old)).status
    p = plan(World(generation=2, spec=SPEC, problems=[], status=st, jobs=old, now=NOW,
                   policy=Policy(max_attempts=2, backoff_seconds=10)))
    assert [d.name for d in p.actions if isinstance(d, DeleteJob)] == ["d-g1-a1-b1"]  # the running one
    assert creates(p) == [("build", 1, 1, ()), ("build", 2, 1, ())]  # generation 2's, from scratch
    assert [b.phase for b in p.status.search.builds] == ["Pending", "Pending"] and p.status.observed_generation == 2
