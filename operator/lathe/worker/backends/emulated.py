"""A TensorRT candidate's graph evaluated on the CPU with ONNX Runtime, before any engine is built.

Not a runtime a candidate can name (not registered): the pipeline uses it for runtime tensorrt's accuracy
pre-check and for its mixed-precision search, so that a graph which already breaks the budget never costs a GPU
build. Q/DQ graphs (INT8, FP8, INT4) run as they are; FP16/BF16 graphs run as `emulate_low_precision` writes
them (FP32 arithmetic, every FP16/BF16 tensor rounded to its type). Figures from it are labelled emulated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Artifact, Runner
from .onnxruntime import OnnxRuntimeBackend

EMULATED_FILE = "emulated.onnx"


class CpuEmulation:
    name = "emulated"

    def __init__(self) -> None:
        self.ort = OnnxRuntimeBackend()

    def build(self, onnx_path: Path, outdir: Path, options: dict[str, Any]) -> Artifact:
        from ..passes.graph_precision import emulate_low_precision, needs_emulation  # noqa: PLC0415

        outdir = Path(outdir) / "emulated"
        outdir.mkdir(parents=True, exist_ok=True)
        src = Path(onnx_path)
        meta: dict[str, Any] = {"graph": str(src), "emulated": False}
        if needs_emulation(src):
            emu = outdir / EMULATED_FILE
            meta["rounding"] = emulate_low_precision(src, emu)
            meta["emulated"] = True
            src = emu
        art = self.ort.build(src, outdir, {})
        art.meta.update(meta)
        return art

    def load(self, artifact: Artifact, threads: int) -> Runner:
        return self.ort.load(artifact, threads)
