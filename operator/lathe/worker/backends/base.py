"""The interface every runtime implements (ONNX Runtime and OpenVINO on CPU, TensorRT on GPU):
build an artifact from an ONNX model, run it, and inspect the precision it really runs in.
Benchmarking and validation are generic (lathe.evaluate) and only use `Runner`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

Feeds = dict[str, np.ndarray]
Runner = Callable[[Feeds], list[np.ndarray]]


@dataclass
class Artifact:
    """A built candidate: the files a runtime loads (main file first) and what built it."""

    runtime: str
    files: list[Path]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.files[0]

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


class Backend(ABC):
    name: ClassVar[str]

    @classmethod
    def available(cls) -> str | None:
        """None when usable here, otherwise why not (a missing package, no GPU)."""
        return None

    @abstractmethod
    def build(self, onnx_path: Path, outdir: Path, options: dict[str, Any]) -> Artifact:
        """Turn an (already optimised) ONNX model into this runtime's artifact."""

    @abstractmethod
    def load(self, artifact: Artifact, threads: int) -> Runner:
        """A callable running one batch; outputs in the model's output order."""

    @abstractmethod
    def precision(self, artifact: Artifact) -> dict[str, str]:
        """Node/layer name -> precision it executes in (e.g. FP32, INT8, FP16)."""


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    BACKENDS[cls.name] = cls
    return cls
