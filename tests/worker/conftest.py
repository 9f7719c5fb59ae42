"""Shared, session-scoped real models: all-MiniLM-L6-v2 (exported once, short sequences to keep the suite
fast on 2 cores); the digits CNN is tests/conftest.py's (tests/architectures runs it through Jobs too)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
