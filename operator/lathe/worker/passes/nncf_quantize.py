"""`quantize` on runtime openvino: INT8 post-training quantization with NNCF on the OpenVINO model.

The spec does not change: a candidate with `runtime: openvino` and a `quantize` pass gets this class
instead of the ONNX Runtime one (`passes.make_pass(p, runtime)`). The ONNX file is left as it is; the
pass records what the OpenVINO backend must do at build time (`state.info["openvino"]`):

    openvino.convert_model(onnx) -> [reshape] -> nncf.quantize(model, nncf.Dataset(calibration arrays),
        preset=performance|mixed, model_type=TRANSFORMER (modelType: transformer),
        ignored_scope=excludeNodes + the nodes mixed precision keeps in float)

`modelType` unset means NNCF's default (CNN-style) scheme; on a graph that looks like a transformer the
pass says so in the candidate's notes (on MiniLM the default scheme breaks the embeddings: the budget
gate then rejects the candidate with its cosine). Automatic mixed precision works as for ONNX Runtime:
`sensitivity()` ranks the quantized layers by the error each adds (OpenVINO FP32 vs NNCF INT8 outputs
of every weight layer), and the pipeline re-builds with the worst ones in the ignored scope.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from pydantic.alias_generators import to_camel

from ..backends.openvino_common import detect_transformer_onnx
from .base import ModelState, Pass, PassContext
from .quantize import QuantizeConfig

log = logging.getLogger("lathe.worker.nncf")

# QuantizeConfig fields that are ONNX Runtime settings with no NNCF meaning here
_ORT_ONLY = ("per_channel", "activation_type", "weight_type", "op_types", "keep_io_types", "block_size")


class NNCFQuantize(Pass):
    name = "quantize"
    runtime = "openvino"
    Config = QuantizeConfig
    runtime_only: ClassVar[dict[str, tuple[str, ...]]] = {"preset": ("openvino",), "modelType": ("openvino",)}

    @classmethod
    def check(cls, c: QuantizeConfig, ctx: dict[str, Any]) -> list[tuple[str, str]]:
        p: list[tuple[str, str]] = []
        if c.precision != "int8":
            p.append(("precision", f"runtime openvino quantizes to int8 with NNCF (precision is {c.precision})"))
        if c.mode not in (None, "static"):
            p.append(("mode", f"NNCF calibrates statically: mode must be static or unset on runtime openvino "
                              f"(mode is {c.mode})"))
        for f in _ORT_ONLY:
            if getattr(c, f) is not None:
                p.append((to_camel(f), "an ONNX Runtime setting; not used by runtime openvino (NNCF)"))
        if c.calibration is not None and c.calibration.method != "minmax":
            # NNCF picks its own range estimators per preset; rather than pretend a mapping, refuse.
            p.append(("calibration.method", f"{c.calibration.method} calibration is ONNX Runtime's (runtime "
                                            "onnxruntime); NNCF on runtime openvino sets activation ranges with its "
                                            "own estimators: leave the method at minmax or unset"))
        return p

    def describe(self) -> str:
        c = self.config
        bits = ["int8", f"preset {c.preset or 'performance'}"]
        if c.model_type:
            bits.append(f"model_type {c.model_type}")
        return "nncf(" + ",".join(bits) + ")"

    # ------------------------------------------------------------------ run
    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        if ctx.coverage is not None:
            ctx.coverage.raise_for_errors()
            state.out_of_range = ctx.coverage.out_of_range
            state.warnings.extend(w for w in ctx.coverage.warnings if w not in state.warnings)
        state.quantize_pass = self
        state.quantize_input = state.onnx_path
        state.info.setdefault("openvino", {}).update(self.build_options(ctx, list(state.float_nodes)))
        state.quantized = True
        if not self.config.model_type:
            why = detect_transformer_onnx(state.onnx_path)
            if why:
                note = ("graph looks like a transformer (" + "; ".join(why) + ") but modelType is unset: "
                        "NNCF's default scheme also quantizes attention and normalisation inputs")
                state.notes.append("default NNCF scheme on a transformer graph")
                state.warnings.append(note)
        return state

    def build_options(self, ctx: PassContext, float_nodes: list[str]) -> dict[str, Any]:
        c = self.config
        cal = ctx.calibration
        samples = c.calibration.samples if c.calibration else None
        if samples and cal is not None and hasattr(cal, "head"):
            cal = cal.head(samples)
        return {"quantize": {"preset": c.preset or "performance", "model_type": c.model_type,
                             "exclude_nodes": list(dict.fromkeys([*c.exclude_nodes, *float_nodes]))},
                "calibration": cal}

    # ------------------------------------------------------------------ mixed precision
    def quantizable_nodes(self, src: Path) -> list[str]:
        """ONNX names of the weight layers NNCF quantizes (MatMul/Gemm/Conv with a constant weight)."""
        import onnx  # noqa: PLC0415

        m = onnx.load(str(src), load_external_data=False)
        inits = {i.name for i in m.graph.initializer}
        consts = {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
        return [n.name for n in m.graph.node
                if n.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose") and len(n.input) > 1
                and (n.input[1] in inits or n.input[1] in consts)]

    def sensitivity(self, src: Path, ctx: PassContext, nodes: list[str], threads: int = 0,
                    samples: int = 8) -> list[tuple[str, float]]:
        """(node, added relative error) worst first: FP32 and NNCF INT8 OpenVINO models (same settings,
        nothing ignored) with the outputs of every weight layer exposed, on a few calibration samples."""
        import numpy as np  # noqa: PLC0415
        import openvino as ov  # noqa: PLC0415

        from ..backends.openvino import OpenVINOBackend  # noqa: PLC0415

        be = OpenVINOBackend()
        data = ctx.calibration.head(samples)
        opts = self.build_options(ctx, [])
        opts["quantize"]["exclude_nodes"] = list(self.config.exclude_nodes)
        with tempfile.TemporaryDirectory(prefix="lathe-ovsens-") as tmp:
            fp = be.build(src, Path(tmp) / "fp32", {})
            q = be.build(src, Path(tmp) / "int8", opts)
            core = ov.Core()
            outs = {}
            for tag, art in (("f", fp), ("q", q)):
                m = core.read_model(str(art.path))
                by_name = {op.get_friendly_name(): op for op in m.get_ops()}
                wanted = [n for n in nodes if n in by_name]
                exposed = []
                for n in wanted:
                    m.add_outputs([by_name[n].output(0)])
                    exposed.append(n)
                cfg = {"INFERENCE_PRECISION_HINT": "f32"}
                if threads:
                    cfg["INFERENCE_NUM_THREADS"] = threads
                compiled = core.compile_model(m, "CPU", cfg)
                n_base = len(compiled.outputs) - len(exposed)
                req = compiled.create_infer_request()
                acc: dict[str, list] = {n: [] for n in exposed}
                for feeds in data.batches(1):
                    res = req.infer(feeds)
                    for k, n in enumerate(exposed):
                        acc[n].append(np.array(res[compiled.outputs[n_base + k]], dtype=np.float64))
                outs[tag] = {n: np.concatenate(v) for n, v in acc.items()}
        err = {n: float(np.linalg.norm(outs["f"][n] - outs["q"][n]) / (np.linalg.norm(outs["f"][n]) + 1e-12))
               for n in outs["f"] if n in outs["q"] and outs["f"][n].shape == outs["q"][n].shape}
        # the error a layer adds ~ its error minus the error of the weight layer before it (graph order)
        prev = 0.0
        scores = []
        for n in nodes:
            if n not in err:
                continue
            scores.append((n, max(err[n] - prev, 0.0) + 1e-9 * err[n]))
            prev = err[n]
        scores.sort(key=lambda x: -x[1])
        return scores


def openvino_candidates(spec, family: str | None = None) -> list:
    """The OpenVINO part of the default search set (runtime openvino allowed by the target):
    - ov-fp32: the plain OpenVINO build;
    - ov-int8: NNCF INT8 with the default scheme (preset performance, no model type): the right one for
      convolutional models; on transformers it is still built and measured, so the budget gate rejects it
      with its cosine instead of it being silently skipped (no fallback: it is the control);
    - ov-int8-transformer (transformer graphs): NNCF INT8 with model_type TRANSFORMER, with automatic mixed
      precision in case the budget still breaks;
    - ov-int8-transformer-static: the same IR (the backend reuses the NNCF run) compiled per input shape.
    Shapes pinned in spec.model.inputs are applied to every OpenVINO candidate (static reshape)."""
    from ...api.spec import Candidate, Fallback, PassSpec  # noqa: PLC0415

    fb = Fallback(enabled=True, max_float_nodes=16)
    q = {"type": "quantize", "precision": "int8"}
    out = [Candidate(name="ov-fp32", runtime="openvino", passes=[])]
    if family == "transformer":
        out += [Candidate(name="ov-int8", runtime="openvino", passes=[PassSpec(**q)]),
                Candidate(name="ov-int8-transformer", runtime="openvino",
                          passes=[PassSpec(**q, model_type="transformer")], fallback=fb),
                Candidate(name="ov-int8-transformer-static", runtime="openvino",
                          passes=[PassSpec(**q, model_type="transformer"), PassSpec(type="static-shapes")],
                          fallback=fb)]
    else:
        out += [Candidate(name="ov-int8", runtime="openvino", passes=[PassSpec(**q)], fallback=fb)]
    return out
