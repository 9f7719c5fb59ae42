"""The full result outlives the worker pod: the operator reads it from the pod's log through the
real API server (pods/log, served by the node agent) into a ConfigMap owned by the resource, and
`lathe report` reads it back with a kubeconfig, or falls back to the summary in status."""

from __future__ import annotations

import os
import subprocess
import sys

from lathe.api import result_log
from lathe.api.status import CandidateResult, Latency, WorkerResult
from tests.operator.conftest import wait_for


def _result() -> WorkerResult:
    base = CandidateResult(name="baseline", runtime="onnxruntime", verdict="baseline", accuracy=0.981, p50_ms=1.9,
                           speedup=1.0, speedup_low=1.0, speedup_high=1.0,
                           latency=[Latency(batch=1, p50_ms=1.9, throughput=520.0, samples=600)])
    win = CandidateResult(name="int8-dynamic", runtime="onnxruntime", verdict="passed", reason="within budget",
                          accuracy=0.978, accuracy_drop=0.003, p50_ms=1.1, p99_ms=1.6, speedup=1.73, speedup_low=1.6,
                          speedup_high=1.85, size_bytes=120_000, precision={"INT8": 5, "FP32": 2},
                          latency=[Latency(batch=1, p50_ms=1.1, p99_ms=1.6, throughput=900.0, samples=600)])
    return WorkerResult(metric="top1", baseline=base, candidates=[win], winner="int8-dynamic",
                        selection="fastest within budget: 1.73x [1.60, 1.85]", speedup_basis="p50 latency at batch 1")


def _details() -> dict:
    q = {"min": 0.9, "p5": 1.0, "p25": 1.05, "p50": 1.1, "p75": 1.2, "p95": 1.4, "max": 2.0}
    return {"candidates": {"baseline": {"p50_interval_ms": [1.9, 1.9]},
                           "int8-dynamic": {"p50_interval_ms": [1.03, 1.19]}},
            "benchmark": {n: {"batches": {"1": {"quantiles_ms": q, "samples": 600}}}
                          for n in ("baseline", "int8-dynamic")}}


def _lathe_report(kubeconfig, *args):
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([sys.executable, "-m", "lathe.cli", "report", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_full_result_kept_in_a_config_map_and_read_by_lathe_report(operator, mopt, kubeconfig, tmp_path):
    wr = _result()
    doc = {"result": wr.model_dump(by_alias=True, mode="json"), "details": _details(),
           "budget": {"max_accuracy_drop": 0.01}}
    log = "\n".join(result_log.encode(doc))
    uri = mopt.script("ok", sleep=0.3, message=wr.compact(), log=log)
    created = mopt.create(mopt.body("digits", uri, budget={"maxAccuracyDrop": 0.01}))
    st = mopt.wait_phase("digits", "Succeeded")
    assert st["reportConfigMap"] == "digits-report", st
    cond = {c["type"]: c for c in st["conditions"]}["ReportKept"]
    assert cond["status"] == "True" and "lathe report digits" in cond["message"]
    cm = mopt.core.read_namespaced_config_map("digits-report", mopt.ns)
    assert [(o.kind, o.name, o.uid) for o in cm.metadata.owner_references] == \
        [("ModelOptimization", "digits", created["metadata"]["uid"])]
    import base64

    assert result_log.unpack(base64.b64decode(cm.binary_data[result_log.CONFIG_MAP_KEY])) == doc

    html, js = tmp_path / "report.html", tmp_path / "result.json"
    out = _lathe_report(kubeconfig, "digits", "-n", mopt.ns, "--html", str(html), "--json", str(js))
    assert out.returncode == 0, out.stderr
    assert "result from ConfigMap digits-report" in out.stdout
    assert "int8-dynamic *" in out.stdout and "1.73x [1.60, 1.85]" in out.stdout
    assert "winner: int8-dynamic" in out.stdout
    assert WorkerResult.model_validate_json(js.read_text()).winner == "int8-dynamic"
    text = html.read_text()
    assert text.count('class="box"') == 2 and 'class="interval"' in text  # distributions from the details


def test_without_a_result_block_the_report_falls_back_to_status(operator, mopt, kubeconfig):
    wr = _result()
    uri = mopt.script("ok", sleep=0.3, message=wr.compact(), log="done, but no result block")
    mopt.create(mopt.body("plain", uri))
    st = wait_for(lambda: (s := mopt.status("plain")).get("phase") == "Succeeded"
                  and any(c["type"] == "ReportKept" for c in s.get("conditions", [])) and s,
                  timeout=60, what="plain Succeeded with a ReportKept condition")
    cond = {c["type"]: c for c in st["conditions"]}["ReportKept"]
    assert cond["status"] == "False" and "holds no complete result block" in cond["message"], cond
    assert "reportConfigMap" not in st
    assert any(e.reason == "ReportNotKept" for e in mopt.events("plain"))
    out = _lathe_report(kubeconfig, "plain", "-n", mopt.ns)
    assert out.returncode == 0, out.stderr
    assert "result from status (summary" in out.stdout and "int8-dynamic *" in out.stdout


def test_report_of_a_missing_resource_fails_clearly(operator, mopt, kubeconfig):
    out = _lathe_report(kubeconfig, "nope", "-n", mopt.ns)
    assert out.returncode == 1 and "cannot read modeloptimization nope: 404" in out.stderr
