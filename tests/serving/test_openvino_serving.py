"""An OpenVINO winner, published by the worker, served by a REAL Triton (pytriton wheel: python backend only)
through the `python` flavour (OpenVINO inside Triton), answering what the worker measured; and the native
`openvino` flavour's config checked against Triton's schema.

The digits CNN (trained in the session) goes through the worker restricted to runtime openvino (ov-fp32,
ov-int8); MiniLM's OpenVINO candidates are covered by tests/worker/test_openvino.py."""

from __future__ import annotations

from pathlib import Path

import nncf  # noqa: F401 - installed by e2e/setup.sh; missing is a failure, not a skip
import numpy as np
import openvino  # noqa: F401
import pytest

from lathe.api.spec import parse_spec  # noqa: E402
from lathe.serving import check_config  # noqa: E402
from lathe.serving.repository import publish  # noqa: E402
from lathe.serving.triton import TritonControl  # noqa: E402
from lathe.worker.backends.base import Artifact  # noqa: E402
from lathe.worker.backends.openvino import OpenVINOBackend  # noqa: E402

MODEL = "digits_openvino"


@pytest.fixture(scope="module")
def ov_winner(tmp_path_factory, triton_repo):
    """Run the worker on the digits CNN (runtime openvino only) and publish its winner with the python flavour."""
    from lathe.worker.pipeline import Pipeline
    from lathe.worker.publish_step import publish_winner
    from lathe.worker.samples import make_digits, spec_for

    sample = make_digits(tmp_path_factory.mktemp("ovdigits"))
    spec = parse_spec(spec_for(sample, target={"runtimes": ["openvino"], "threads": 2, "batchSizes": [1]},
                               budget={"maxAccuracyDrop": 0.01, "minSpeedup": 0},
                               publish={"repository": str(triton_repo), "modelName": MODEL, "flavour": "python",
                                        "maxBatchSize": 8}))
    wd = tmp_path_factory.mktemp("ovwork")
    result = Pipeline(spec, wd, bench_seconds=0.2, bench_rounds=2).run()
    published = publish_winner(spec, result, wd)
    assert published is not None, [(c.name, c.verdict, c.reason) for c in result.candidates]
    return {"result": result, "published": published, "sample": sample}


def _worker_outputs(winner, x: np.ndarray) -> np.ndarray:
    """What the worker measured: the winner's artifact through the worker's OpenVINO backend."""
    xml = Path(winner.artifact)
    be = OpenVINOBackend()
    run = be.load(Artifact("openvino", [xml, xml.with_suffix(".bin")]), 1)
    return np.concatenate([run({"input": x[i:i + 8]})[0] for i in range(0, len(x), 8)])


def test_openvino_winner_served_by_triton_python_flavour(triton, triton_repo, ov_winner):
    import tritonclient.http as http

    result, published = ov_winner["result"], ov_winner["published"]
    winner = result.winner_result()
    assert winner.runtime == "openvino" and winner.name in ("ov-fp32", "ov-int8")
    assert published.flavour == "python:openvino"
    vdir = Path(published.path)
    assert {"model.xml", "model.bin", "model.py", "lathe.json"} <= {p.name for p in vdir.iterdir()}
    cfg = check_config((vdir.parent / "config.pbtxt").read_text(), name=MODEL)
    assert cfg.backend == "python" and cfg.max_batch_size == 8
    assert [i.name for i in cfg.input] == ["input"] and list(cfg.input[0].dims) == [1, 8, 8]

    ctl = TritonControl(triton.http_url, triton_repo, metrics_url=triton.metrics_url)
    ctl.serve(MODEL, [published.version])
    x = np.load(ov_winner["sample"]["validation"])["input"][:64].astype(np.float32)
    c = http.InferenceServerClient(triton.http_url)
    try:
        got = []
        for i in range(0, len(x), 8):
            inp = http.InferInput("input", list(x[i:i + 8].shape), "FP32")
            inp.set_data_from_numpy(np.ascontiguousarray(x[i:i + 8]))
            out_name = cfg.output[0].name
            got.append(c.infer(MODEL, [inp], model_version=str(published.version)).as_numpy(out_name))
        got = np.concatenate(got)
    finally:
        c.close()
        ctl.unload(MODEL)
    want = _worker_outputs(winner, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_native_openvino_flavour_config_matches_triton_schema(ov_winner, tmp_path):
    winner = ov_winner["result"].winner_result()
    xml = Path(winner.artifact)
    pub = publish(tmp_path / "repo", "digits_ov_native", [xml, xml.with_suffix(".bin")], "openvino", None, winner.name)
    assert pub.flavour == "openvino"  # publish.flavour auto + runtime openvino
    vdir = Path(pub.path)
    assert {p.name for p in vdir.iterdir()} == {"model.xml", "model.bin", "lathe.json"}
    cfg = check_config((vdir.parent / "config.pbtxt").read_text(), name="digits_ov_native")
    assert cfg.backend == "openvino" and not cfg.platform
    from tritonclient.grpc import model_config_pb2

    assert [o.name for o in cfg.output] and cfg.input[0].data_type == model_config_pb2.TYPE_FP32


@pytest.fixture(scope="module")
def minilm_ov(tmp_path_factory, triton_repo):
    """MiniLM (seq 32) quantized by NNCF with the transformer scheme, published with the python flavour."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lathe.worker.samples import make_minilm

    sample = make_minilm(tmp_path_factory.mktemp("ovminilm"), seq=32, n_calibration=32, n_validation=16)
    cal = dict(np.load(sample["calibration"]))
    be = OpenVINOBackend()
    art = be.build(Path(sample["model"]), tmp_path_factory.mktemp("ovminilm-build"),
                   {"quantize": {"model_type": "transformer"}, "calibration": cal})
    pub = publish(triton_repo, "minilm_openvino", art.files, "openvino", None, "ov-int8-transformer",
                  flavour="python")
    return {"sample": sample, "artifact": art, "published": pub}


def test_minilm_int8_openvino_served_by_triton(triton, triton_repo, minilm_ov):
    import tritonclient.http as http

    pub, art = minilm_ov["published"], minilm_ov["artifact"]
    assert pub.flavour == "python:openvino"
    cfg = check_config((Path(pub.path).parent / "config.pbtxt").read_text(), name="minilm_openvino")
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input_ids", [-1]), ("attention_mask", [-1])]
    val = dict(np.load(minilm_ov["sample"]["validation"]))
    ctl = TritonControl(triton.http_url, triton_repo, metrics_url=triton.metrics_url)
    ctl.serve("minilm_openvino", [pub.version])
    c = http.InferenceServerClient(triton.http_url)
    try:
        got = []
        for i in range(0, 16, 4):
            inputs = []
            for name in ("input_ids", "attention_mask"):
                x = np.ascontiguousarray(val[name][i:i + 4])
                inp = http.InferInput(name, list(x.shape), "INT64")
                inp.set_data_from_numpy(x)
                inputs.append(inp)
            got.append(c.infer("minilm_openvino", inputs).as_numpy(cfg.output[0].name))
        got = np.concatenate(got)
    finally:
        c.close()
        ctl.unload("minilm_openvino")
    run = OpenVINOBackend().load(art, 1)
    want = np.concatenate([run({k: v[i:i + 4] for k, v in val.items()})[0] for i in range(0, 16, 4)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
