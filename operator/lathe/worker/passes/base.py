"""What every pass shares: the model state handed from pass to pass, the context, the base class.
Nothing heavy is imported here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class PassConfig(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              use_enum_values=True)


@dataclass
class ModelState:
    """The model as it flows through a candidate's passes: always an ONNX file, plus the PyTorch
    module while the candidate is still in PyTorch (structured pruning and quantization-aware
    training need it)."""

    onnx_path: Path
    torch_module: Any = None
    quantized: bool = False
    notes: list[str] = field(default_factory=list)        # short facts for CandidateResult.passes
    warnings: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)  # kept in float by mixed precision
    quantize_pass: Any = None                              # the quantize pass and its input, for fallback
    quantize_input: Path | None = None
    out_of_range: float | None = None
    activation_coverage: dict[str, float] | None = None  # static INT8: tensor -> share outside its range
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    workdir: Path                 # this candidate's folder
    spec: Any                     # ModelOptimizationSpec
    model: Any                    # intake.ModelInfo
    calibration: Any              # data.Dataset
    validation: Any               # data.Dataset
    coverage: Any = None          # data.CoverageReport
    threads: int = 0
    progress: Any = None          # Progress
    candidate: str = ""
    training: Any = None          # data.Dataset (spec.data.training), None when not given
    calibration_is_validation: bool = False  # no spec.data.calibration: calibration is the validation set

    def report(self, stage: str, fraction: float, message: str = "") -> None:
        if self.progress is not None:
            self.progress(f"{self.candidate}:{stage}" if self.candidate else stage, fraction, message)


class Pass:
    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]]
    # settings that only make sense on some runtimes: field -> runtimes
    runtime_only: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, config: PassConfig):
        self.config = config

    @classmethod
    def check(cls, config: PassConfig, ctx: dict[str, Any]) -> list[tuple[str, str]]:
        """Cross-field problems as (field, message); ctx has runtime, format, index, passes."""
        return []

    def describe(self) -> str:
        return self.name

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:  # pragma: no cover - abstract
        raise NotImplementedError
