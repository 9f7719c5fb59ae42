"""Triton control against the REAL server: N+1 beside N, readiness per version, unload after promotion,
failed load leaves N serving with its config restored, unreachable Triton -> clear error type."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from e2e.triton.server import free_port
from lathe.api.spec import Publish
from lathe.serving import TritonControl, TritonLoadError, TritonUnavailable, publish
from lathe.serving.config import config_versions


def infer(url, model, x, version=""):
    c = http.InferenceServerClient(url)
    try:
        i = http.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        return c.infer(model, [i], model_version=version).as_numpy("logits")
    finally:
        c.close()


def test_load_beside_then_promote_and_failed_load(triton, triton_repo, digits_models):
    m, x = "ctl", digits_models["x"][:8]
    sp = Publish(repository=str(triton_repo), model_name=m, flavour="python")
    publish(triton_repo, m, [digits_models["fp32"]], "onnxruntime", sp, "baseline")
    publish(triton_repo, m, [digits_models["int8"]], "onnxruntime", sp, "int8")
    tc = TritonControl(triton.http_url, triton_repo, metrics_url=triton.metrics_url)
    tc.serve(m, [1])
    assert tc.ready_versions(m) == [1] and tc.version_ready(m, 1) and not tc.version_ready(m, 2)
    ref = infer(triton.http_url, m, x, "1")
    assert (ref.argmax(1) == digits_models["y"][:8]).mean() >= 0.75

    tc.serve(m, [1, 2])  # N+1 beside N
    assert tc.ready_versions(m) == [1, 2]
    np.testing.assert_allclose(infer(triton.http_url, m, x, "1"), ref, rtol=1e-5)
    q = infer(triton.http_url, m, x, "2")
    assert (q.argmax(1) == ref.argmax(1)).mean() >= 0.85  # INT8 agrees with FP32

    # a broken N+2 fails to load: versions 1 and 2 keep serving, config restored
    bad = triton_repo / m / "3"
    shutil.copytree(triton_repo / m / "2", bad)
    (bad / "model.onnx").write_bytes(b"not onnx")
    cfg_before = (triton_repo / m / "config.pbtxt").read_text()
    with pytest.raises(TritonLoadError, match="version 3|versions failed|load failed"):
        tc.serve(m, [2, 3])
    assert (triton_repo / m / "config.pbtxt").read_text() == cfg_before
    assert tc.ready_versions(m) == [1, 2]
    infer(triton.http_url, m, x, "1")
    infer(triton.http_url, m, x, "2")
    shutil.rmtree(bad)

    tc.serve(m, [2])  # promotion: old version unloaded only now
    assert tc.ready_versions(m) == [2] and config_versions((triton_repo / m / "config.pbtxt").read_text()) == [2]
    with pytest.raises(InferenceServerException):
        infer(triton.http_url, m, x, "1")
    tc.unload(m)
    assert tc.ready_versions(m) == []

    with pytest.raises(TritonLoadError, match="not in the repository"):
        tc.serve(m, [9])


def test_unreachable_triton_is_a_clear_error(tmp_path, digits_models):
    sp = Publish(repository=str(tmp_path), model_name="m", flavour="python")
    publish(tmp_path, "m", [digits_models["fp32"]], "onnxruntime", sp, "c")
    port = free_port()
    tc = TritonControl(f"127.0.0.1:{port}", tmp_path, metrics_url=f"http://127.0.0.1:{free_port()}/metrics",
                       timeout=2)
    before = (tmp_path / "m/config.pbtxt").read_text()
    with pytest.raises(TritonUnavailable, match="not live|unreachable"):
        tc.serve("m", [1])
    with pytest.raises(TritonUnavailable, match="unreachable"):
        tc.metrics_text()
    assert (tmp_path / "m/config.pbtxt").read_text() == before
