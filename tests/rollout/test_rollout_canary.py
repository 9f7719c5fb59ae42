"""Real canary rollouts on the REAL Triton: traffic through the router model (BLS, weighted), decisions
from Triton's per-version Prometheus metrics, executed step by step like the operator's timer would.

- a good INT8 canary is promoted: Triton ends up serving only N+1, the router sends 100% to it;
- a failing canary and a much slower canary are rolled back: only N is served;
- in every case no request to the stable version failed during the swaps (client side and Triton metrics).
"""

from __future__ import annotations

import json
import time

import pytest

from e2e.triton.load import Load
from lathe.api.spec import Analysis, Publish, Rollout, RolloutStep
from lathe.api.status import RolloutStatus
from lathe.rollout import RolloutExecutor, observe, start
from lathe.rollout.router import router_name
from lathe.serving import TritonControl, publish

SPEC = Rollout(steps=[RolloutStep(weight=20, pause_seconds=1, min_requests=8),
                      RolloutStep(weight=50, pause_seconds=1, min_requests=10),
                      RolloutStep(weight=100, pause_seconds=1, min_requests=10)],
               analysis=Analysis(max_error_rate=0.05, max_latency_ratio=8.0))  # slow canary: +40 ms on ~1 ms; loose for a shared 2-core box


def setup_model(triton, repo, models, name, fault=None):
    sp = Publish(repository=str(repo), model_name=name, flavour="python")
    publish(repo, name, [models["fp32"]], "onnxruntime", sp, "baseline")
    p2 = publish(repo, name, [models["int8"]], "onnxruntime", sp, "int8-dynamic")
    if fault:  # test-only flag: honoured because the server runs with LATHE_ALLOW_FAULT_INJECTION=1
        (repo / name / str(p2.version) / "fault.json").write_text(json.dumps(fault))
    tc = TritonControl(triton.http_url, repo, metrics_url=triton.metrics_url)
    ex = RolloutExecutor(tc, name)
    tc.serve(name, [1])
    ex.router.set_weights({1: 100})  # production before the rollout: stable behind the router
    return tc, ex


def drive(ex, spec, status: RolloutStatus, timeout=90.0):
    """The operator's timer: one step per tick, the status persisted (JSON round trip) between ticks."""
    deadline = time.monotonic() + timeout
    seen_weights = []
    while status.state in ("Pending", "Progressing"):
        assert time.monotonic() < deadline, status
        status, actions = ex.step(spec, RolloutStatus.model_validate(status.model_dump(mode="json")))
        if actions:
            seen_weights.append(dict(status.weights))
        time.sleep(0.25)
    return status, seen_weights


def failures(tc, model, version):
    c = observe(tc.metrics_text(), model).counters.get(version)
    return c.failure if c else 0.0


def run(triton, triton_repo, digits_models, name, fault):
    tc, ex = setup_model(triton, triton_repo, digits_models, name, fault)
    x = digits_models["x"][:1]
    with Load(triton.http_url, router_name(name), x, rate=60, threads=3, max_requests=3000) as via_router, \
            Load(triton.http_url, name, x, version="1", rate=15, threads=1, max_requests=1000) as direct_stable:
        status, weights = drive(ex, SPEC, start(1, 2))
        # after a rollback, stable keeps serving: keep the direct stable load a little longer
        time.sleep(0.5)
    r, d = via_router.result, direct_stable.result
    return tc, ex, status, weights, r, d


def test_good_canary_is_promoted(triton, triton_repo, digits_models):
    name = "canary_good"
    tc, ex, status, weights, r, d = run(triton, triton_repo, digits_models, name, None)
    assert status.state == "Promoted", status.model_dump()
    assert weights[:3] == [{"1": 80, "2": 20}, {"1": 50, "2": 50}, {"1": 0, "2": 100}]
    assert [h.decision for h in status.history] == ["Passed", "Passed", "Passed"]
    assert status.history[0].requests["2"] >= 8
    assert tc.ready_versions(name) == [2] and ex.router.current() == {2: 100}
    # traffic really moved: every router request succeeded, the canary served a share
    assert r.failed == 0, r.errors
    assert r.ok > 50
    # the direct stable client may see version 1 disappear only at promotion (unload after promotion)
    assert all("version" in e or "unavailable" in e.lower() or "not found" in e.lower() for e in d.errors), d.errors
    assert d.ok > 10


@pytest.mark.parametrize("fault,why", [({"fail_rate": 1.0}, "error rate"), ({"sleep_ms": 40}, "latency")])
def test_bad_canary_is_rolled_back(triton, triton_repo, digits_models, fault, why):
    name = "canary_" + ("fail" if "fail_rate" in fault else "slow")
    tc, ex, status, weights, r, d = run(triton, triton_repo, digits_models, name, fault)
    assert status.state == "RolledBack" and why in status.reason, status.model_dump()
    assert status.history[-1].decision == "Failed"
    assert tc.ready_versions(name) == [1] and ex.router.current() == {1: 100}
    # no request to the stable version failed during the swaps
    assert d.failed == 0, d.errors
    assert failures(tc, name, 1) == 0
    if "fail_rate" in fault:  # router failures are exactly the canary's share, all "injected"
        assert r.failed > 0 and all("injected failure" in e for e in r.errors), r.errors
    else:
        assert r.failed == 0, r.errors
