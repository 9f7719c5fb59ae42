"""Production samples: a capped sample of the inputs stable answers on live traffic, kept as a Lathe data
set and compared with the calibration set the canary was built from.

On the REAL Triton with real traffic: the router samples what stable answers into `<model>_capture`,
the executor drains it every tick and, when the rollout ends, merges the parts into production.npz; the
capture holds exactly rows that were sent (and stable's answers to them), stops at its cap, and warns
when production (two classes, twice as bright) does not look like calibration (all classes). The pure
comparison is checked on real digits too: a capture drawn like the calibration set is representative.
"""

from __future__ import annotations

import json
import time

import numpy as np

from lathe.api.spec import Analysis, Coverage, Publish, Rollout, RolloutStep
from lathe.api.status import RolloutStatus
from lathe.rollout import RolloutExecutor, start
from lathe.rollout.capture import PROFILE_FILE, compare, decode, encode, merge, profile
from lathe.rollout.capture_run import CaptureRun
from lathe.rollout.capture_store import CaptureStore
from lathe.rollout.router import CaptureParams, Compare, capture_name, router_name
from lathe.serving import TritonControl, publish
from lathe.worker import data as datamod
from tests.rollout.test_rollout_agreement import Answers

INPUTS = [datamod.InputMeta("input", [None, 64], "float32")]


def fp32_logits(models, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(models["fp32"]), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": np.asarray(x, dtype=np.float32)})[0]


def test_representative_capture_passes_and_a_narrow_calibration_set_is_flagged(digits_models):
    x, y = np.asarray(digits_models["x"], np.float32), digits_models["y"]
    cal, prod = x[:150], x[150:300]
    prof = profile({"input": cal}, fp32_logits(digits_models, cal))
    rep = compare(prof, {"input": prod}, fp32_logits(digits_models, prod), max_out_of_range=0.05,
                  max_class_shift=0.2, classification=True)
    assert rep.representative is True and rep.warnings == [], rep
    assert rep.out_of_range["input"] <= 0.05 and rep.class_shift < 0.2
    # Calibrated on classes 0-4 only: classes 5-9 of production were never seen there.
    low = cal[np.isin(y[:150], [0, 1, 2, 3, 4])]
    narrow = profile({"input": low}, fp32_logits(digits_models, low))
    rep = compare(narrow, {"input": prod}, fp32_logits(digits_models, prod), max_out_of_range=0.05,
                  max_class_shift=0.2, classification=True)
    assert rep.representative is False and rep.class_shift > 0.3, rep
    unseen = set(fp32_logits(digits_models, prod).argmax(1)) - set(fp32_logits(digits_models, low).argmax(1))
    assert set(rep.unseen_classes) == unseen and len(unseen) >= 3, (rep.unseen_classes, unseen)
    assert any("never answered" in w for w in rep.warnings)


def test_rows_of_other_shapes_stay_apart():
    a = {"ids": np.ones((3, 8), np.int64), "__lathe_answer__": np.zeros((3, 2), np.float32)}
    b = {"ids": np.ones((1, 12), np.int64), "__lathe_answer__": np.zeros((1, 2), np.float32)}
    m = merge([decode(encode(a)), b, a])
    assert m.inputs["ids"].shape == (6, 8) and m.answers.shape == (6, 2)
    assert len(m.others) == 1 and m.others[0]["ids"].shape == (1, 12)


def _publish(repo, name, models, tmp_path, cal_x):
    """Two versions, each with the calibration profile the worker writes beside its report."""
    rep = tmp_path / "report"
    rep.mkdir()
    (rep / "report.json").write_text("{}")
    (rep / PROFILE_FILE).write_text(json.dumps(profile({"input": cal_x}, fp32_logits(models, cal_x))))
    sp = Publish(repository=str(repo), model_name=name, flavour="python")
    publish(repo, name, [models["fp32"]], "onnxruntime", sp, "baseline", report_path=rep / "report.json")
    publish(repo, name, [models["int8"]], "onnxruntime", sp, "int8", report_path=rep / "report.json")


def test_capture_keeps_what_stable_answered_within_caps_and_warns(triton, triton_repo, digits_models, tmp_path):
    name = "capture_digits"
    x, y = np.asarray(digits_models["x"], np.float32), digits_models["y"]
    _publish(triton_repo, name, digits_models, tmp_path, x[:200])
    prod = np.ascontiguousarray(x[np.isin(y, [0, 1])] * 2.0)  # production: two classes, twice as bright
    tc = TritonControl(triton.http_url, triton_repo, metrics_url=triton.metrics_url)
    store = CaptureStore(str(tmp_path / "capture"))
    run = CaptureRun(CaptureParams(percent=50, max_rows=8, max_bytes=1 << 20, output="logits"), store,
                     classification=True, max_out_of_range=Coverage().max_out_of_range, max_class_shift=0.2)
    ex = RolloutExecutor(tc, name, compare=Compare(kind="top1", output="logits"), capture=run)
    tc.serve(name, [1])
    ex.router.set_weights({1: 100})
    spec = Rollout(steps=[RolloutStep(weight=0, mirror=100, pause_seconds=1, min_requests=0),
                          RolloutStep(weight=100, pause_seconds=1, min_requests=5)],
                   analysis=Analysis(max_error_rate=0.0, max_latency_ratio=8.0, min_agreement=0.9,
                                     min_compared_requests=20))
    client = Answers(triton.http_url, router_name(name), prod)
    client.start()
    status = start(1, 2)
    deadline = time.monotonic() + 90
    try:
        while status.state in ("Pending", "Progressing"):
            assert time.monotonic() < deadline, status
            status, _ = ex.step(spec, RolloutStatus.model_validate(status.model_dump(mode="json")))
            time.sleep(0.25)
    finally:
        client.halt.set()
        client.join(10)
    print("rollout:", status.reason, [h.model_dump() for h in status.history], status.capture)  # shown if it fails
    assert status.state == "Promoted", status.reason
    c = status.capture
    assert c.state == "Complete", c
    assert client.errors == [], client.errors[:3]
    # Within its caps: the shadow step waits for 20 compared requests, all answered by stable, so at least
    # 10 were sampled; 8 rows kept, the rest counted as dropped.
    assert c.samples == 8 and c.requests == 8 and c.dropped >= 2, c
    ds = datamod.load(tmp_path / "capture" / "production.npz", INPUTS, "calibration")  # usable as calibration data
    assert len(ds) == 8
    sent = {r.tobytes() for r in prod}
    assert all(r.tobytes() in sent for r in ds.feeds["input"])  # every kept row is one that was sent
    with np.load(tmp_path / "capture" / "answers.npz") as z:
        answers = z["answers"]
    assert (answers.argmax(1) == fp32_logits(digits_models, ds.feeds["input"]).argmax(1)).all()  # stable's (v1)
    # The report, against the canary's calibration profile, computed offline on the same rows.
    rep = c.report
    cal = x[:200]
    expect_oor = float(((ds.feeds["input"] < cal.min()) | (ds.feeds["input"] > cal.max())).mean())
    assert abs(rep.out_of_range["input"] - expect_oor) < 1e-6 and expect_oor > 0.05, rep
    assert rep.representative is False and rep.class_shift > 0.5, rep
    assert any("outside the calibration set's range" in w for w in rep.warnings)
    assert any("class mix" in w for w in rep.warnings)
    saved = json.loads((tmp_path / "capture" / "report.json").read_text())
    assert saved["report"]["classShift"] == rep.class_shift and saved["canary_version"] == 2
    assert store.names("part-") == []  # merged, nothing left half-way
    assert capture_name(name) not in {n for (n, _v), (s, _) in tc.index().items() if s == "READY"}


def test_a_small_capture_is_not_flagged_for_a_shift_chance_alone_explains():
    prof = {"samples": 1000, "inputs": {}, "classes": {str(k): 0.1 for k in range(10)}}
    few = np.eye(10, dtype=np.float32)[[0, 0, 0, 1, 1, 2, 3, 4, 5, 6]]  # 10 answers: 0.3 from the mix
    rep = compare(prof, {"input": np.zeros((10, 1), np.float32)}, few, max_out_of_range=0.05,
                  max_class_shift=0.2, classification=True)
    assert rep.class_shift == 0.3 and rep.class_shift_p > 0.2 and rep.warnings == [], rep
    many = np.eye(10, dtype=np.float32)[np.repeat([0, 0, 0, 1, 1, 2, 3, 4, 5, 6], 50)]  # same mix, 500 answers
    rep = compare(prof, {"input": np.zeros((500, 1), np.float32)}, many, max_out_of_range=0.05,
                  max_class_shift=0.2, classification=True)
    assert rep.class_shift == 0.3 and rep.class_shift_p < 0.01 and "class mix" in rep.warnings[0], rep
