"""A worker and its memory limit (pure): a batch whose inputs alone exceed the limit is refused before any
Job; a worker the kernel killed is said as killed for memory, with the limit, the stage and the batch size."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import ModelOptimizationStatus
from lathe.controller.config import OperatorConfig
from lathe.controller.jobs import job_manifest
from lathe.controller.killed import killed_detail, last_progress
from lathe.controller.plan import ObservedJob, Policy, World, plan
from lathe.controller.validate import problems
from lathe.evaluate.batch_memory import parse_quantity, sample_bytes

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
IMAGE = {"name": "input", "shape": ["batch", 3, 224, 224], "dtype": "float32"}  # 602,112 bytes a sample


def spec(inputs=(IMAGE,), batch_sizes=(1, 64), limits=None) -> ModelOptimizationSpec:
    return ModelOptimizationSpec.model_validate({
        "model": {"uri": "pvc://m/model.pt", "format": "torchscript", "inputs": list(inputs)},
        "data": {"validation": {"uri": "pvc://m/val.npz"}},
        "target": {"batchSizes": list(batch_sizes), "resources": {"limits": limits or {}}}})


@pytest.mark.parametrize("text, value", [("1500Mi", 1500 << 20), ("2Gi", 2 << 30), ("1G", 10**9), ("512974848", 512974848),
                                         ("1e9", 10**9), ("1.5Gi", 3 << 29), ("128k", 128000), ("lots", None)])
def test_parse_quantity(text, value):
    assert parse_quantity(text) == value


def test_sample_bytes_only_when_every_dimension_but_the_batch_is_known():
    s = spec(inputs=(IMAGE, {"name": "mask", "shape": ["batch", 16], "dtype": "int64"}))
    assert sample_bytes(s.model.inputs) == 3 * 224 * 224 * 4 + 16 * 8
    assert sample_bytes(spec(inputs=({"name": "ids", "shape": ["batch", "sequence"], "dtype": "int64"},)).model.inputs) is None
    assert sample_bytes(spec(inputs=({"name": "x"},)).model.inputs) is None  # no shape declared


def test_a_batch_whose_inputs_alone_exceed_the_limit_is_refused_before_any_job():
    # 602,112 bytes a sample: batch 2048 needs 1.15 GiB of inputs under a 1Gi limit
    found = problems(spec(batch_sizes=(1, 2048), limits={"memory": "1Gi"}))
    assert found == ["spec.target.batchSizes: batch size 2048 needs 1.1 GiB for its inputs alone (602112 bytes a "
                     "sample, spec.model.inputs: input ['batch', 3, 224, 224] float32), more than the worker's memory "
                     "limit 1Gi (1.0 GiB): inputs alone fit below 1783 samples a batch, and running the model needs "
                     "more; lower spec.target.batchSizes or raise spec.target.resources.limits.memory"]
    assert problems(spec(batch_sizes=(1, 1024), limits={"memory": "1Gi"})) == []  # 0.57 GiB: not certain to fail
    # no limit in the spec: the operator's default limit is the one the Job gets
    assert problems(spec(batch_sizes=(4096,)), memory_limit="2Gi")[0].startswith("spec.target.batchSizes: batch size 4096")
    assert problems(spec(batch_sizes=(4096,))) == []  # no limit at all: nothing to hold it against
    dynamic = spec(inputs=({"name": "ids", "shape": ["batch", "sequence"], "dtype": "int64"},), batch_sizes=(10**9,),
                   limits={"memory": "1Gi"})
    assert problems(dynamic) == []  # unknown here: the worker checks it with the data's arrays
    assert problems(spec(limits={"memory": "a lot"})) == [
        "spec.target.resources.limits.memory: 'a lot' is not a quantity (e.g. 4Gi, 1500Mi)"]


def test_the_job_tells_the_worker_its_memory_limit():
    """The container's limits.memory reaches the worker through the Downward API (bytes; the node's allocatable
    memory without a limit): it refuses oversized batches and causal LMs too big for it before loading them."""
    owner = {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization",
             "metadata": {"name": "x", "namespace": "ml", "uid": "u", "generation": 1}}

    def env(s, cfg=None):
        c = job_manifest(owner, s, "{}", 1, cfg or OperatorConfig())["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e for e in c["env"]}, c["resources"]["limits"].get("memory"), c["name"]

    values, limit, container = env(spec(limits={"memory": "1500Mi"}))
    assert limit == "1500Mi"
    assert [e for e in values.values() if e["name"] == "LATHE_MEMORY_LIMIT"] == [{
        "name": "LATHE_MEMORY_LIMIT", "valueFrom": {"resourceFieldRef": {
            "containerName": container, "resource": "limits.memory", "divisor": "1"}}}]
    assert env(spec())[1] == OperatorConfig().cpu_resources["limits"]["memory"]
    no_limit = OperatorConfig(cpu_resources={"requests": {"cpu": "1"}, "limits": {}})
    values, limit, _ = env(spec(), no_limit)
    assert limit is None and "resourceFieldRef" in values["LATHE_MEMORY_LIMIT"]["valueFrom"]


LOG = """2026-12-05 07:40:01 INFO lathe.worker [candidates] 100%
2026-12-05 07:40:01 INFO lathe.worker [benchmark]   0% batch sizes 1, 2800000
2026-12-05 07:40:02 INFO lathe.worker [benchmark]   0% warm-up batch 2800000 baseline"""


def test_last_progress_reads_stage_and_batch():
    assert last_progress(LOG) == ("benchmark", "warm-up batch 2800000 baseline", 2800000)
    assert last_progress("2026 INFO lathe.worker [pass 0 quantize]   0% static int8\nKilled") == (
        "pass 0 quantize", "static int8", None)
    assert last_progress("no progress here") == (None, None, None)


def test_killed_for_memory_says_so_with_limit_stage_and_batch():
    said = killed_detail(137, "OOMKilled", "1500Mi", LOG, [1, 2800000])
    assert said == ("OOMKilled: the worker needed more than its memory limit 1500Mi (exit code 137) during benchmark "
                    "at batch size 2800000; raise spec.target.resources.limits.memory or benchmark smaller batches "
                    "(spec.target.batchSizes)")
    # containerd 1.6 on a busy machine: exit 137 with reason Error although the kernel killed it for memory
    honest = killed_detail(137, "Error", "1500Mi", LOG, [1, 2800000])
    assert honest.startswith("killed by SIGKILL (exit code 137, reason Error) under its memory limit 1500Mi: most "
                             "likely for memory (the kernel's OOM killer; the container runtime did not report "
                             "OOMKilled) during benchmark at batch size 2800000")
    early = killed_detail(137, "OOMKilled", "1Gi", "INFO lathe.worker [intake]   0% pvc://m/model.pt", [1, 64])
    assert "during intake (batch sizes 1, 64): pvc://m/model.pt" in early
    assert killed_detail(137, "Error", None, LOG, [1]) is None  # SIGKILL with no limit: not ours to blame memory
    assert killed_detail(1, "Error", "1Gi", LOG, [1]) is None


def test_the_status_says_oomkilled_not_the_last_log_line():
    s = spec(batch_sizes=(1, 2800000), limits={"memory": "1500Mi"})
    first = plan(World(1, s, [], ModelOptimizationStatus(), [], NOW, Policy(max_attempts=1))).status
    killed = ObservedJob("x-g1-a1", 1, 1, "failed", exit_code=137, message=LOG, log_tail=LOG,
                         container_reason="OOMKilled", memory_limit="1500Mi")
    st = plan(World(1, s, [], first, [killed], NOW, Policy(max_attempts=1))).status
    cond = {c.type: c for c in st.conditions}["Ready"]
    assert st.phase == "Failed" and cond.reason == "WorkerFailed"
    assert cond.message == ("Job x-g1-a1: OOMKilled: the worker needed more than its memory limit 1500Mi (exit code "
                            "137) during benchmark at batch size 2800000; raise spec.target.resources.limits.memory "
                            "or benchmark smaller batches (spec.target.batchSizes)")
