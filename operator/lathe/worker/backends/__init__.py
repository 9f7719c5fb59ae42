"""Runtimes behind one interface (base.Backend). `get_backend(name)` imports the module of a
runtime on first use, so that importing this package stays cheap."""

from __future__ import annotations

import importlib

from .base import BACKENDS, Artifact, Backend, Runner, register_backend

__all__ = ["BACKENDS", "Artifact", "Backend", "Runner", "register_backend", "get_backend"]

_MODULES = {"onnxruntime": ".onnxruntime", "openvino": ".openvino", "tensorrt": ".tensorrt"}


def get_backend(name: str) -> Backend | None:
    """An instance of the named backend, or None when this worker does not have it."""
    if name not in BACKENDS and name in _MODULES:
        try:
            importlib.import_module(_MODULES[name], __name__)
        except ImportError:
            return None
    cls = BACKENDS.get(name)
    return cls() if cls is not None else None


def unavailable_reason(name: str) -> str:
    cls = BACKENDS.get(name)
    if cls is None:
        get_backend(name)
        cls = BACKENDS.get(name)
    if cls is None:
        return f"runtime {name} is not available in this worker"
    return cls.available() or ""
