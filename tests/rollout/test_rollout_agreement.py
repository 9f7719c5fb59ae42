"""Canaries judged on their answers, on the REAL Triton: the router mirrors a share of live requests to
the other version of the pair, compares the two answers (top-1 here) in the background, and exposes the
figures as Triton custom metrics that the rollout analysis reads beside Triton's own.

- a canary as fast and error-free as stable but answering differently on a slice of inputs (classes 0 and
  1 swapped) is rolled back at the shadow step, by agreement alone;
- during that shadow step no client answer came from the canary, and no request failed;
- a faithful INT8 canary is promoted, with its agreement recorded per step; a client calling the model
  by its own name instead of the router is reported as bypassing the split.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

from e2e.triton.load import Load
from lathe.api.spec import Analysis, Publish, Rollout, RolloutStep
from lathe.api.status import RolloutStatus
from lathe.rollout import RolloutExecutor, observe, start
from lathe.rollout.router import Compare, router_name
from lathe.serving import TritonControl, publish

ANALYSIS = Analysis(max_error_rate=0.0, max_latency_ratio=8.0, min_agreement=0.97, min_compared_requests=40)
STEPS = [RolloutStep(weight=0, mirror=100, pause_seconds=3, min_requests=0),
         RolloutStep(weight=30, mirror=50, pause_seconds=1, min_requests=10),
         RolloutStep(weight=100, pause_seconds=1, min_requests=10)]


def swapped(src, dst):
    """The same model with classes 0 and 1 swapped in its logits: same cost, other answers on a slice."""
    m = onnx.load(str(src))
    out = m.graph.output[0].name
    m.graph.node[-1].output[0] = "unswapped"
    perm = helper.make_tensor("perm", TensorProto.INT64, [10], [1, 0, 2, 3, 4, 5, 6, 7, 8, 9])
    m.graph.initializer.append(perm)
    m.graph.node.append(helper.make_node("Gather", ["unswapped", "perm"], [out], axis=1))
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


class Answers(threading.Thread):
    """A client of the router that keeps every answer: row i of x -> the class it got."""

    def __init__(self, url, model, x):
        super().__init__(daemon=True)
        import tritonclient.http as http

        self.http, self.url, self.model, self.x = http, url, model, x
        self.got: list[tuple[int, int]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self):
        self.c = self.http.InferenceServerClient(self.url)  # gevent-based: made in the thread that uses it
        i = 0
        while not self.halt.is_set():
            row = i % len(self.x)
            inp = self.http.InferInput("input", [1, self.x.shape[1]], "FP32")
            inp.set_data_from_numpy(self.x[row:row + 1])
            try:
                self.got.append((row, int(self.c.infer(self.model, [inp]).as_numpy("logits").argmax())))
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(str(e)[:200])
            i += 1
            time.sleep(0.004)


def roll(triton, repo, models, name, canary_file, spec: Rollout, timeout=120.0, direct_rate=0.0):
    sp = Publish(repository=str(repo), model_name=name, flavour="python")
    publish(repo, name, [models["fp32"]], "onnxruntime", sp, "baseline")
    publish(repo, name, [canary_file], "onnxruntime", sp, "canary")
    tc = TritonControl(triton.http_url, repo, metrics_url=triton.metrics_url)
    ex = RolloutExecutor(tc, name, compare=Compare(kind="top1", output="logits"))
    tc.serve(name, [1])
    ex.router.set_weights({1: 100})
    x = np.asarray(models["x"], dtype=np.float32)
    client = Answers(triton.http_url, router_name(name), x)
    client.start()
    direct = Load(triton.http_url, name, x[:1], rate=direct_rate, threads=1, max_requests=5000) if direct_rate else None
    if direct:
        direct.start()  # a client that calls the model itself, bypassing the router
    status, during_shadow = start(1, 2), []
    deadline = time.monotonic() + timeout
    shadow_from = None  # answers from the tick that routed the shadow step until the one that ended it
    try:
        while status.state in ("Pending", "Progressing"):
            assert time.monotonic() < deadline, status
            before = len(client.got)
            status, _ = ex.step(spec, RolloutStatus.model_validate(status.model_dump(mode="json")))
            in_shadow = status.state == "Progressing" and status.step == 0
            if in_shadow and shadow_from is None:
                shadow_from = len(client.got)
            elif not in_shadow and shadow_from is not None and not during_shadow:
                during_shadow = client.got[shadow_from:before]
            time.sleep(0.25)
    finally:
        client.halt.set()
        client.join(10)
        if direct:
            direct.stop()
    return tc, ex, status, client, during_shadow, x


def stable_answers(models, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(models["fp32"]), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0].argmax(1)


def test_disagreeing_canary_is_rolled_back_by_agreement_alone(triton, triton_repo, digits_models, tmp_path):
    name = "agree_swapped"
    canary = swapped(digits_models["fp32"], tmp_path / "swapped.onnx")
    tc, ex, status, client, shadow, x = roll(triton, triton_repo, digits_models, name, canary,
                                             Rollout(steps=STEPS, analysis=ANALYSIS))
    assert status.state == "RolledBack", status.model_dump()
    assert "agree with stable on" in status.reason and "step 1 (0%)" in status.reason, status.reason
    judged = status.history[-1]
    assert judged.decision == "Failed" and judged.compared >= ANALYSIS.min_compared_requests
    # The swapped classes are ~20% of the digits: that is the disagreement measured on live traffic.
    expect = stable_answers(digits_models, x)
    share_01 = float(np.isin(expect, [0, 1]).mean())
    assert abs((1 - judged.agreement) - share_01) < 0.12, (judged.agreement, share_01)
    # ... and nothing else was wrong with it: no errors, latency within bounds (not the reason).
    assert judged.error_rate.get("2", 0.0) == 0.0 and "latency" not in status.reason
    # The shadow step served every client from stable: each answer is stable's, never a swapped one.
    assert len(shadow) > 20 and all(int(expect[row]) == got for row, got in shadow)
    assert client.errors == [], client.errors[:3]
    assert tc.ready_versions(name) == [1] and ex.router.current() == {1: 100}
    c = observe(tc.metrics_text(), name).counters
    assert c[1].failure == 0
    assert not judged.bypassed  # every request came through the router


def test_faithful_int8_canary_is_promoted_with_its_agreement(triton, triton_repo, digits_models):
    name = "agree_int8"
    tc, ex, status, client, shadow, x = roll(triton, triton_repo, digits_models, name, digits_models["int8"],
                                             Rollout(steps=STEPS, analysis=ANALYSIS), direct_rate=20)
    print("rollout:", status.reason, [h.model_dump() for h in status.history])  # shown in full if it fails
    assert status.state == "Promoted", status.reason
    mirrored = [h for h in status.history if h.compared]
    assert [h.step for h in mirrored] == [0, 1], status.history
    assert all(h.agreement >= ANALYSIS.min_agreement for h in mirrored), [h.agreement for h in mirrored]
    assert "agreement" in mirrored[0].reason
    assert client.errors == [], client.errors[:3]
    assert tc.ready_versions(name) == [2]
    # A second client called `agree_int8` itself: the status says its requests escaped the split.
    bypass = [h for h in status.history if h.bypassed]
    assert bypass and "reached the model directly" in bypass[0].reason, [h.reason for h in status.history]
