"""`quantize` on runtime onnxruntime-genai (task causal-lm): weight-only INT4/INT8 of the MatMuls (MatMulNBits).
The typed pass (settings, checks) lives here with the other passes; what it runs is worker/llm/quantize.py."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from ...api.spec import CalibrationSettings, Precision, QuantMode, WeightAlgorithm
from ..llm.matmulnbits import DEFAULT_ACCURACY_LEVEL, DEFAULT_BLOCK
from .base import ModelState, Pass, PassConfig, PassContext

BLOCK_SIZES = (16, 32, 64, 128, 256)


class WeightOnlyConfig(PassConfig):
    precision: Precision = Precision.int4
    mode: QuantMode | None = None
    algorithm: WeightAlgorithm = WeightAlgorithm.rtn
    block_size: int | None = None
    accuracy_level: int | None = Field(None, ge=0, le=4)
    symmetric: bool | None = None
    float_offset: bool | None = None
    int8_nodes: list[str] = Field(default_factory=list)
    int8_sensitive: int | None = Field(None, ge=0)
    exclude_nodes: list[str] = Field(default_factory=list)
    calibration: CalibrationSettings | None = None


class WeightOnlyQuantize(Pass):
    name = "quantize"
    Config = WeightOnlyConfig
    runtime_only: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def check(cls, c: WeightOnlyConfig, ctx: dict[str, Any]) -> list[tuple[str, str]]:
        p: list[tuple[str, str]] = []
        if c.precision not in ("int4", "int8"):
            p.append(("precision", f"runtime onnxruntime-genai quantizes weights to int4 or int8 (MatMulNBits); "
                                   f"{c.precision} is not available on the CPU (FP8/NVFP4 need TensorRT-LLM on a GPU)"))
        if c.mode is not None:
            p.append(("mode", "runtime onnxruntime-genai quantizes weights only: no dynamic/static/qat mode"))
        if c.block_size is not None and c.block_size not in BLOCK_SIZES:
            p.append(("blockSize", f"must be one of {', '.join(map(str, BLOCK_SIZES))} (MatMulNBits blocks)"))
        if c.precision == "int8" and (c.int8_nodes or c.int8_sensitive):
            p.append(("int8Nodes" if c.int8_nodes else "int8Sensitive", "only used with precision int4"))
        if c.algorithm in ("hqq", "gptq", "awq") and c.precision != "int4":
            p.append(("algorithm", f"{c.algorithm} quantizes to int4 only"))
        if c.algorithm == "awq" and (c.block_size or DEFAULT_BLOCK) not in (32, 64, 128):
            p.append(("blockSize", "awq takes block size 32, 64 or 128"))
        if c.float_offset and c.algorithm not in ("rtn", "hqq"):
            p.append(("floatOffset", f"only with algorithm rtn (its min/max grid) or hqq (its float zero points), "
                                     f"not {c.algorithm}"))
        if c.float_offset and c.symmetric:
            p.append(("floatOffset", "an offset grid is asymmetric: leave symmetric unset or false"))
        if c.algorithm == "hqq" and c.symmetric:
            p.append(("symmetric", "hqq always fits a zero point per block (asymmetric)"))
        if c.calibration is not None and c.algorithm not in ("gptq", "awq"):
            p.append(("calibration", f"only gptq and awq read calibration text ({c.algorithm} does not)"))
        if c.calibration is not None and c.calibration.method != "minmax":
            p.append(("calibration.method", "weight-only quantization has no activation ranges to calibrate: "
                                            "only calibration.samples (windows of text) is used"))
        if ctx.get("task") not in (None, "causal-lm"):
            p.append(("type", "runtime onnxruntime-genai serves task causal-lm only"))
        return p

    @property
    def bits(self) -> int:
        return 4 if self.config.precision == "int4" else 8

    def describe(self) -> str:
        c = self.config
        bits = [f"{c.precision} {c.algorithm}", f"block {c.block_size or DEFAULT_BLOCK}"]
        if c.accuracy_level is not None and c.accuracy_level != DEFAULT_ACCURACY_LEVEL:
            bits.append(f"accuracy level {c.accuracy_level}")
        if c.float_offset:
            bits.append("float offsets beside the kernel")
        elif c.symmetric is False:
            bits.append("asymmetric")
        if c.int8_nodes:
            bits.append(f"{len(c.int8_nodes)} named MatMul(s) at int8")
        if c.int8_sensitive:
            bits.append(f"{c.int8_sensitive} most sensitive MatMul(s) at int8")
        if c.exclude_nodes:
            bits.append(f"{len(c.exclude_nodes)} MatMul(s) in fp32")
        return "weight-only " + ", ".join(bits)

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        from ..llm.quantize import quantize_weights  # noqa: PLC0415

        return quantize_weights(self, state, ctx)
