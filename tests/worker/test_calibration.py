"""Calibration does what the spec says, on the digits CNN: MinMax, Entropy and Percentile each run their
own ONNX Runtime calibrator (histograms for the last two) and give different activation ranges; per-tensor
and per-channel weights are what the graph holds; OpenVINO refuses a method it would not honour."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lathe.api.status import Verdict
from lathe.controller.validate import problems
from lathe.worker import pipeline

CANDIDATES = [
    {"name": f"int8-{m}", "passes": [{"type": "quantize", "precision": "int8", "mode": "static",
                                      "calibration": {"method": m}}]} for m in ("minmax", "entropy", "percentile")
] + [{"name": "int8-per-tensor", "passes": [{"type": "quantize", "precision": "int8", "mode": "static",
                                             "perChannel": False}]}]


@pytest.fixture(scope="module")
def run(digits, make_spec, tmp_path_factory):
    spec = make_spec(digits, candidates=CANDIDATES, target={"batchSizes": [8], "threads": 2},
                     budget={"maxAccuracyDrop": 0.05, "minSpeedup": 0})  # calibration under test, not speed
    workdir = tmp_path_factory.mktemp("calibration-run")
    return pipeline.run(spec, workdir, bench_seconds=1, bench_rounds=2), workdir


def _ranges(workdir, method) -> dict[str, tuple[float, float]]:
    """The ranges ONNX Runtime quantized with (its calibration cache, kept beside the candidate's model)."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    found = sorted(workdir.rglob(f"calibration-{method}.json"))
    assert found, f"no calibration cache for {method} under {workdir}"
    data = load_tensors_data(found[0])
    return {k: (float(np.ravel(v.range_value[0])[0]), float(np.ravel(v.range_value[1])[0]))
            for k, v in data.data.items()}


def test_entropy_and_percentile_really_run_and_differ_from_minmax(run):
    result, workdir = run
    for c in result.candidates:
        assert c.verdict != Verdict.failed, (c.name, c.reason)
    mm, en, pc = (_ranges(workdir, m) for m in ("minmax", "entropy", "percentile"))
    assert set(mm) == set(en) == set(pc) and len(mm) >= 5
    width = {name: {k: hi - lo for k, (lo, hi) in r.items()} for name, r in (("mm", mm), ("en", en), ("pc", pc))}
    # Histogram methods clip outliers: never wider than the observed extremes, and narrower somewhere.
    for other in ("en", "pc"):
        assert all(width[other][k] <= width["mm"][k] * 1.0001 + 1e-6 for k in mm), other
        narrower = [k for k in mm if width[other][k] < 0.98 * width["mm"][k]]
        assert narrower, f"{other} gave the same ranges as minmax"
    assert any(abs(width["en"][k] - width["pc"][k]) > 1e-3 * max(width["mm"][k], 1e-6) for k in mm)
    # and the candidates' descriptions and models carry the method
    methods = {c.name: c.passes for c in result.candidates}
    assert "entropy" in str(methods["int8-entropy"]) and "percentile" in str(methods["int8-percentile"])


def _weight_scales(path) -> list[np.ndarray]:
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = []
    for n in m.graph.node:  # a weight's DequantizeLinear: its input is an int8 initializer
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8 \
                and inits[n.input[0]].ndim == 4:
            out.append(inits[n.input[1]])
    return out


def test_per_channel_and_per_tensor_weights(run):
    result, _ = run
    arts = {c.name: c.artifact for c in result.candidates}
    per_channel = _weight_scales(arts["int8-minmax"])
    per_tensor = _weight_scales(arts["int8-per-tensor"])
    assert per_channel and per_tensor and len(per_channel) == len(per_tensor)
    assert all(s.ndim == 1 and s.size > 1 for s in per_channel)  # one scale per output channel
    assert all(s.size == 1 for s in per_tensor)


def test_openvino_refuses_a_calibration_method_it_would_not_honour(digits, make_spec):
    spec = make_spec(digits, target={"runtimes": ["openvino"]}, candidates=[
        {"name": "ov", "runtime": "openvino", "passes": [{"type": "quantize", "precision": "int8",
                                                          "calibration": {"method": "entropy"}}]}])
    out = problems(spec)
    assert len(out) == 1 and out[0].startswith("spec.candidates[0].passes[0].calibration.method: entropy"), out


def test_activation_coverage_per_candidate_and_its_budget(run, digits, make_spec, tmp_path):
    result, workdir = run
    cov = {c.name: (c.activation_out_of_range, c.activation_out_of_range_tensor) for c in result.candidates}
    for name, (share, tensor) in cov.items():
        assert share is not None and 0.0 <= share < 1.0 and tensor, (name, share, tensor)
    assert cov["int8-minmax"][0] == 0.0 or cov["int8-minmax"][0] <= min(cov["int8-entropy"][0], cov["int8-percentile"][0])
    # the histogram methods clip: some validation activations fall outside their ranges
    assert max(cov["int8-entropy"][0], cov["int8-percentile"][0]) > 0.0, cov
    details = __import__("json").loads((workdir / "details.json").read_text())["candidates"]["int8-entropy"]
    assert details["activation_coverage"] and next(iter(details["activation_coverage"])) == cov["int8-entropy"][1]
    report = (workdir / "report.html").read_text()
    assert "activations outside range (worst tensor)" in report and f"{cov['int8-entropy'][0]:.2%}" in report
    # A budget below the entropy candidate's figure rejects it, saying which tensor and by how much.
    limit = cov["int8-entropy"][0] / 2
    spec = make_spec(digits, candidates=CANDIDATES[1:2], target={"batchSizes": [8], "threads": 2},
                     budget={"maxAccuracyDrop": 0.05, "minSpeedup": 0, "maxActivationOutOfRange": limit})
    r = pipeline.run(spec, tmp_path / "gated", bench_seconds=1, bench_rounds=2)
    c = r.candidates[0]
    assert c.verdict == Verdict.rejected and "fall outside their calibrated range" in c.reason, c.reason
    assert c.activation_out_of_range_tensor in c.reason
