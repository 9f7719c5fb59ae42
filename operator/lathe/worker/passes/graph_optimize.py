"""`graph-optimize`: ONNX Runtime's offline graph optimisation (constant folding, fusions; level
`all` adds layout changes tied to this CPU type). The baseline is timed with the same online
optimisations, so this pass mostly saves session start-up time and shows what fusion gives."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .base import ModelState, Pass, PassConfig, PassContext


class GraphOptimizeConfig(PassConfig):
    level: str = Field("extended", pattern=r"^(basic|extended|all)$")


class GraphOptimize(Pass):
    name = "graph-optimize"
    Config = GraphOptimizeConfig

    @classmethod
    def check(cls, c: GraphOptimizeConfig, ctx: dict[str, Any]) -> list[tuple[str, str]]:
        if ctx.get("runtime") not in (None, "onnxruntime"):
            return [("type", f"graph-optimize is ONNX Runtime's optimiser; runtime {ctx['runtime']} optimises its own graphs")]
        return []

    def describe(self) -> str:
        return f"graph-optimize({self.config.level})"

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        import onnxruntime as ort  # noqa: PLC0415

        levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        dst = ctx.workdir / f"optimized-{self.config.level}.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[self.config.level]
        so.optimized_model_filepath = str(dst)
        so.intra_op_num_threads = 1
        ort.InferenceSession(str(state.onnx_path), so, providers=["CPUExecutionProvider"])
        state.onnx_path = dst
        return state
