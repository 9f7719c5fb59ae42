"""The real operator (kopf, in-process) against the real API server, with real Jobs whose pods the
node agent runs. Workers here are scripted (tests/operator/scripted_worker.py); the end-to-end
test runs the real one."""

from __future__ import annotations

import json
import urllib.request

import pytest
from kubernetes.client.rest import ApiException

from lathe.api.status import CandidateResult, WorkerResult
from tests.operator.conftest import wait_for


def _result(winner: bool = True) -> str:
    base = CandidateResult(name="baseline", runtime="onnxruntime", verdict="baseline", accuracy=0.981, p50_ms=1.9)
    cands = [
        CandidateResult(name="int8-dynamic", runtime="onnxruntime", verdict="passed" if winner else "rejected",
                        reason="" if winner else "top1 0.700 < 0.971 allowed (drop 0.281 > 0.010)",
                        accuracy=0.978 if winner else 0.7, accuracy_drop=0.003 if winner else 0.281,
                        p50_ms=1.1, p99_ms=1.6, speedup=1.73, size_bytes=120_000),
        CandidateResult(name="fp16", runtime="onnxruntime", verdict="rejected", reason="speedup 0.81x < 1.00x",
                        accuracy=0.981, accuracy_drop=0.0, p50_ms=2.3, speedup=0.81),
    ]
    return WorkerResult(metric="top1", baseline=base, candidates=cands,
                        winner="int8-dynamic" if winner else None).compact()


@pytest.mark.parametrize("bad_spec, message", [
    ({"data": {"validation": {"uri": "v.npz"}}}, "spec.model: Required value"),
    ({"model": {"uri": "m.onnx", "format": "keras"}, "data": {"validation": {"uri": "v.npz"}}}, "Unsupported value"),
    ({"model": {"uri": "m.onnx"}, "data": {"validation": {"uri": "v.npz"}},
      "candidates": [{"name": "p", "passes": [{"type": "prune", "method": "structured", "sparsity": 1.5}]}]},
     "should be less than or equal to 1"),
    ({"model": {"uri": "m.onnx"}, "data": {"validation": {"uri": "v.npz"}},
      "target": {"device": "cpu", "runtimes": ["tensorrt"]}}, "tensorrt needs target.device gpu"),
    ({"model": {"uri": "m.onnx"}, "data": {"validation": {"uri": "v.npz"}},
      "candidates": [{"name": "q", "passes": [{"type": "quantize", "precision": "fp16", "mode": "static"}]}]},
     "static and qat modes need precision int8"),
    ({"model": {"uri": "m.onnx"}, "data": {"validation": {"uri": "v.npz"}},
      "publish": {"repository": "/r", "modelName": "m",
                  "rollout": {"router": "gateway", "gateway": {"hostnames": ["Not A Hostname"]}}}},
     "spec.publish.rollout.gateway.hostnames[0]"),
])
def test_schema_rejects_bad_resources_at_the_api_server(mopt, bad_spec, message):
    body = {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": "bad"},
            "spec": bad_spec}
    with pytest.raises(ApiException) as e:
        mopt.create(body)
    assert e.value.status == 422 and message in e.value.body


def test_success_writes_the_whole_story(operator, mopt):
    uri = mopt.script("ok", sleep=0.5, message=_result())
    mopt.create(mopt.body("digits", uri, budget={"maxAccuracyDrop": 0.01}))
    st = mopt.wait_phase("digits", "Succeeded")
    assert st["winner"] == "int8-dynamic" and st["speedup"] == "1.73x" and st["accuracyDrop"] == "0.0030"
    assert st["observedGeneration"] == 1
    assert [c["name"] for c in st["candidates"]] == ["int8-dynamic", "fp16"]
    assert st["candidates"][1]["verdict"] == "rejected" and "0.81x" in st["candidates"][1]["reason"]
    assert st["baseline"]["accuracy"] == pytest.approx(0.981)
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Validated"]["reason"] == "CandidateSelected"
    (job,) = mopt.jobs("digits")
    pod = job.spec.template.spec
    assert pod.automount_service_account_token is False
    assert pod.containers[0].security_context.read_only_root_filesystem is True
    assert job.metadata.owner_references[0].name == "digits"
    # Events are posted off the reconcile's critical path: they arrive shortly after the status.
    wait_for(lambda: {"JobCreated", "Succeeded"} <= {e.reason for e in mopt.events("digits")}, what="events")


def test_no_candidate_in_budget_is_rejected(operator, mopt):
    uri = mopt.script("rej", message=_result(winner=False))
    mopt.create(mopt.body("strict", uri))
    st = mopt.wait_phase("strict", "Rejected")
    assert st.get("winner") is None
    cond = {c["type"]: c for c in st["conditions"]}["Validated"]
    assert cond["reason"] == "NoCandidateInBudget" and "drop 0.281" in cond["message"]


def test_crash_is_retried_with_backoff_then_reported(operator, mopt):
    uri = mopt.script("crash", exit=3, log="Traceback: RuntimeError: out of memory",
                      message=json.dumps({"error": "RuntimeError: out of memory", "stage": "benchmark",
                                          "kind": "Crash"}))
    mopt.create(mopt.body("crashy", uri))
    st = mopt.wait_phase("crashy", "Failed", timeout=90)
    assert len(mopt.jobs("crashy")) == 2  # LATHE_MAX_ATTEMPTS=2
    assert st["job"]["exitCode"] == 3 and st["job"]["attempt"] == 2
    assert "out of memory" in st["message"] and "gave up after 2 attempts" in st["message"]
    assert "out of memory" in st["job"]["logTail"]
    assert {c["type"]: c["reason"] for c in st["conditions"]}["Ready"] == "WorkerFailed"


def test_bad_input_fails_at_once(operator, mopt):
    uri = mopt.script("badin", exit=2, message=json.dumps(
        {"error": "model.onnx: not an ONNX model (protobuf parse error)", "stage": "intake", "kind": "InvalidInput"}))
    mopt.create(mopt.body("badinput", uri))
    st = mopt.wait_phase("badinput", "Failed")
    assert "not an ONNX model" in st["message"] and len(mopt.jobs("badinput")) == 1
    assert {c["type"]: c["reason"] for c in st["conditions"]}["Validated"] == "InvalidInput"


def _job_refused_by_quota(mopt) -> bool:
    job = {"metadata": {"generateName": "probe-"},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "c", "image": "probe"}]}}}}
    try:
        mopt.batch.create_namespaced_job(mopt.ns, job, dry_run="All")
    except ApiException as e:
        if e.status == 403 and "quota" in e.body:
            return True
        raise
    return False


def test_refused_job_is_reported_and_retried(operator, mopt):
    # A ResourceQuota that allows no Jobs: the real API server's quota admission refuses the create.
    mopt.core.create_namespaced_resource_quota(mopt.ns, {"metadata": {"name": "no-jobs"},
                                                         "spec": {"hard": {"count/jobs.batch": "0"}}})
    # Quota admission ignores a quota until the quota controller has written its status.hard (a busy
    # machine once let the Job through): wait until a dry-run Job is refused, as the operator's will be.
    wait_for(lambda: _job_refused_by_quota(mopt), timeout=60, what="quota enforced")
    mopt.create(mopt.body("quota", mopt.script("q", message=_result())))
    st = mopt.wait_phase("quota", "Pending")
    assert st["stage"] == "retry" and "could not create the worker Job" in st["message"]
    assert "403" in st["message"] and "quota" in st["message"]
    assert {c["type"]: c["reason"] for c in st["conditions"]}["Ready"] == "JobCreateRefused"
    assert mopt.jobs("quota") == []
    wait_for(lambda: any(e.reason == "JobCreateRefused" for e in mopt.events("quota")), what="event")
    mopt.core.delete_namespaced_resource_quota("no-jobs", mopt.ns)
    st = mopt.wait_phase("quota", "Succeeded")
    assert st["job"]["attempt"] == 1 and len(mopt.jobs("quota")) == 1


def test_invalid_spec_names_the_field_and_others_keep_going(operator, mopt):
    mopt.create(mopt.body("unknown-pass", mopt.script("x", message=_result()),
                          candidates=[{"name": "c", "passes": [{"type": "quantise"}]}]))
    mopt.create(mopt.body("missing-claim", "pvc://no-such-claim/model.onnx"))
    mopt.create(mopt.body("fine", mopt.script("fine", message=_result())))
    st = mopt.wait_phase("unknown-pass", "Failed")
    cond = {c["type"]: c for c in st["conditions"]}["Validated"]
    assert cond["reason"] == "InvalidSpec" and "spec.candidates[0].passes[0].type" in cond["message"]
    assert "quantise" in cond["message"]
    st = mopt.wait_phase("missing-claim", "Failed")
    assert "spec.model.uri" in st["message"] and "no-such-claim" in st["message"] and "not found" in st["message"]
    mopt.wait_phase("fine", "Succeeded")
    assert mopt.jobs("unknown-pass") == [] and mopt.jobs("missing-claim") == []


def test_spec_change_supersedes_the_running_job(operator, mopt):
    slow = mopt.script("slow", sleep=60, message=_result())
    mopt.create(mopt.body("changing", slow))
    wait_for(lambda: mopt.status("changing").get("stage") == "worker" and mopt.jobs("changing"), what="job")
    fast = mopt.script("fast", message=_result())
    mopt.api.patch_namespaced_custom_object("lathe.dev", "v1alpha1", mopt.ns, "modeloptimizations", "changing",
                                            {"spec": {"model": {"uri": fast}}})
    st = wait_for(lambda: (s := mopt.status("changing")).get("observedGeneration") == 2
                  and s.get("phase") == "Succeeded" and s, timeout=60, what="generation 2 done")
    assert st["job"]["generation"] == 2
    names = {j.metadata.name for j in mopt.jobs("changing")}
    assert "changing-g1-a1" not in names or all(
        j.metadata.deletion_timestamp for j in mopt.jobs("changing") if j.metadata.name == "changing-g1-a1")
    wait_for(lambda: any(e.reason == "SpecChanged" for e in mopt.events("changing")), what="SpecChanged event")


def _job_finished(job) -> bool:
    return bool(job.status.succeeded or job.status.failed)


def test_restart_resumes_without_repeating_work(operator, mopt):
    # Three resources across one restart: done before it, their Job finishing while the operator is
    # down, and their Job running through it (stopped early in its run, started long before its end).
    mopt.create(mopt.body("resume", mopt.script("r", message=_result())))
    before = mopt.wait_phase("resume", "Succeeded")
    mopt.create(mopt.body("whiledown", mopt.script("wd", sleep=8, message=_result())))
    mopt.create(mopt.body("midrun", mopt.script("mr", sleep=25, message=_result())))
    started = {n: wait_for(lambda n=n: mopt.status(n).get("stage") == "worker" and mopt.jobs(n), what=f"{n} job")
               for n in ("whiledown", "midrun")}
    assert all(len(jobs) == 1 and not _job_finished(jobs[0]) for jobs in started.values()), started
    operator.stop()
    # Nothing reconciles now: the Job finishes and its result waits in the pod's termination message.
    wait_for(lambda: _job_finished(mopt.jobs("whiledown")[0]), timeout=60, what="whiledown Job done, operator down")
    assert mopt.status("whiledown")["stage"] == "worker", mopt.status("whiledown")
    operator.start()
    (running,) = mopt.jobs("midrun")
    assert not _job_finished(running), "midrun's Job ended before the restart: the test needs a longer sleep"
    assert mopt.status("midrun")["stage"] == "worker"
    mopt.create(mopt.body("after-restart", mopt.script("ar", message=_result())))
    mopt.wait_phase("after-restart", "Succeeded")
    for name in ("whiledown", "midrun"):
        st = mopt.wait_phase(name, "Succeeded", timeout=90)
        (job,) = mopt.jobs(name)  # no second Job
        assert job.metadata.uid == started[name][0].metadata.uid, f"{name}: its Job was deleted and made again"
        assert st["job"]["name"] == job.metadata.name and st["job"]["attempt"] == 1, st["job"]
        assert st["winner"] == "int8-dynamic" and [c["name"] for c in st["candidates"]] == ["int8-dynamic", "fp16"]
    assert len(mopt.jobs("resume")) == 1
    after = mopt.status("resume")
    assert after["job"] == before["job"] and after["candidates"] == before["candidates"]


def test_delete_cleans_up_through_the_finalizer(operator, mopt):
    mopt.create(mopt.body("gone", mopt.script("g", sleep=60)))
    (job,) = wait_for(lambda: mopt.jobs("gone"), what="job")
    # The first pass creates the Job before kopf adds the finalizer (the Job's ownerReference
    # covers that moment); the finalizer must follow.
    wait_for(lambda: "lathe.dev/finalizer" in (mopt.get("gone")["metadata"].get("finalizers") or []),
             what="finalizer")
    # Owner-reference garbage collection deletes an owned Job once its owner is gone, finalizer or
    # not. Out of its reach (no ownerReference), only the finalizer's own cleanup can delete the Job.
    name = job.metadata.name
    mopt.batch.patch_namespaced_job(name, mopt.ns, [{"op": "remove", "path": "/metadata/ownerReferences"}])
    assert not mopt.batch.read_namespaced_job(name, mopt.ns).metadata.owner_references
    mopt.api.delete_namespaced_custom_object("lathe.dev", "v1alpha1", mopt.ns, "modeloptimizations", "gone")

    def gone():
        try:
            mopt.get("gone")
            return False
        except ApiException as e:
            return e.status == 404

    def job_deleted():
        try:
            return mopt.batch.read_namespaced_job(name, mopt.ns).metadata.deletion_timestamp is not None
        except ApiException as e:
            if e.status != 404:
                raise
            return True
    wait_for(gone, what="resource removed")
    # No waiting here: the finalizer held the resource until its cleanup had deleted the Job.
    assert job_deleted(), f"Job {name} outlived its ModelOptimization"


def test_metrics_are_served(operator, operator_env, mopt):
    mopt.create(mopt.body("counted", mopt.script("c", message=_result())))
    mopt.wait_phase("counted", "Succeeded")
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator_env['LATHE_METRICS_PORT']}/metrics").read().decode()
    assert 'lathe_resources{phase="Succeeded"}' in text
    assert "lathe_jobs_created_total" in text and "lathe_reconcile_seconds_count" in text
