"""Triton serving: model repository writer (atomic publish of version N+1) and Triton control."""

from . import (
           genai_flavour,  # noqa: F401, E402 - registers the genai flavour (causal LMs, onnxruntime-genai)
           openvino_flavour,  # noqa: F401, E402 - registers the openvino and python:openvino flavours
)
from .config import (
           FLAVOURS,
           ConfigError,
           Flavour,
           check_config,
           onnx_signature,
           parse_config,
           register_flavour,
)
from .repository import PublishError, publish, resolve_repository, verify, versions
from .triton import TritonControl, TritonError, TritonLoadError, TritonUnavailable

__all__ = ["publish", "PublishError", "ConfigError", "check_config", "parse_config", "onnx_signature",
           "resolve_repository", "versions", "verify", "FLAVOURS", "Flavour", "register_flavour",
           "TritonControl", "TritonError", "TritonLoadError", "TritonUnavailable"]
