"""Shared, session-scoped real models: all-MiniLM-L6-v2 (exported once, short sequences to keep the suite
fast on 2 cores) and the digits CNN with an activation outlier; the digits CNN itself is tests/conftest.py's
(tests/architectures runs it through Jobs too)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def outlier_cnn(digits, tmp_path_factory):
    """The digits CNN with one channel of its first convolution made a constant 500 (zero weights, bias 500) that
    the second convolution ignores (zero weights for it): FP32 answers are unchanged, but a per-tensor INT8 scale
    for the second convolution's input then rounds every real activation there to zero. Only that convolution
    kept in float (its input not quantized) brings the accuracy back: what mixed precision must find."""
    import torch

    net = torch.jit.load(str(digits["model"]))
    conv1, conv2 = getattr(net.features, "0"), getattr(net.features, "2")
    with torch.no_grad():
        conv1.weight[0] = 0.0
        conv1.bias[0] = 500.0
        conv2.weight[:, 0] = 0.0
    model = tmp_path_factory.mktemp("outlier") / "outlier_cnn.pt"
    net.save(str(model))
    return {**digits, "model": model}


@pytest.fixture(scope="session")
def minilm(tmp_path_factory):
    from lathe.worker.samples import make_minilm

    return make_minilm(tmp_path_factory.mktemp("minilm"), seq=64, n_calibration=48, n_validation=48)


def _make_spec(sample, **overrides):
    from lathe.api.spec import parse_spec
    from lathe.worker.samples import spec_for

    return parse_spec(spec_for(sample, **overrides))


@pytest.fixture(scope="session")
def make_spec():
    """make_spec(sample, **spec_overrides) -> ModelOptimizationSpec"""
    return _make_spec
