"""Traffic routers: how a `Route(weights)` action becomes a real split.

- `TritonRouter`: a python-backend model `<model>_router` inside the same Triton (BLS forwarding,
  see router_model.py); weights live in its config parameters, and the router is reloaded at each
  step. Clients send inference to `<model>_router`; Triton's per-version metrics of `<model>` see
  the split. Works with Triton alone.
- `GatewayRouter`: renders a Gateway API HTTPRoute (rollout.gateway) and hands it to `apply`
  (the operator's Kubernetes client); for clusters with a gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from lathe.serving.config import check_config, parse_config
from lathe.serving.triton import TritonControl, TritonLoadError, TritonUnavailable


def router_name(model: str) -> str:
    return f"{model}_router"


def weights_param(weights: dict[int, int]) -> str:
    return ",".join(f"{v}:{w}" for v, w in sorted(weights.items()))


@dataclass(frozen=True)
class Compare:
    """How the router compares mirrored answers (from the resource's task and analysis)."""
    kind: str = "close"  # top1 | cosine | close
    output: str | None = None  # default: the model's first output
    tolerance: float = 0.01
    timeout_ms: int = 1000


@dataclass(frozen=True)
class CaptureParams:
    """What the router samples into `<model>_capture` (spec.publish.rollout.capture)."""
    percent: float
    max_rows: int
    max_bytes: int
    output: str | None = None  # stable's answer kept beside the inputs; default: the compared/first output


def compare_for(metric: str, output: str | None, tolerance: float, timeout_ms: int) -> Compare:
    kind = {"top1": "top1", "top5": "top1", "cosine": "cosine"}.get(metric, "close")
    return Compare(kind, output, tolerance, timeout_ms)


def router_config(model: str, model_config_text: str, weights: dict[int, int], instances: int = 1,
                  mirror: int = 0, pair: tuple[int, int] | None = None, compare: Compare | None = None,
                  capture: CaptureParams | None = None, capture_version: int | None = None) -> str:
    """Router config: the real model's IO and batch size, python backend, weights (and mirroring) as parameters."""
    src = parse_config(model_config_text)
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    cfg.name = router_name(model)
    cfg.backend = "python"
    cfg.max_batch_size = src.max_batch_size
    cfg.input.extend(src.input)
    cfg.output.extend(src.output)
    if src.max_batch_size > 0:
        cfg.dynamic_batching.SetInParent()  # groups concurrent requests into one async execute
    g = cfg.instance_group.add()
    g.kind, g.count = model_config_pb2.ModelInstanceGroup.KIND_CPU, instances
    cfg.parameters["target_model"].string_value = model
    cfg.parameters["weights"].string_value = weights_param(weights)
    if is_decoupled(src):  # a causal LM (genai flavour): llm_router_model.py streams and judges on tokens
        cfg.model_transaction_policy.decoupled = True
        if mirror and pair:
            c = compare or Compare()
            for k, v in {"mirror": str(mirror), "pair": f"{pair[0]}:{pair[1]}", "compare": "tokens",
                         "mirror_timeout_ms": str(c.timeout_ms)}.items():
                cfg.parameters[k].string_value = v
        text = text_format.MessageToString(cfg)  # no capture: live prompts are not sampled for causal LMs
        check_config(text, name=cfg.name)
        return text
    if mirror and pair:
        c = compare or Compare()
        output = c.output or src.output[0].name
        if output not in {o.name for o in src.output}:
            raise ValueError(f"{model}: no output {output!r} to compare (outputs: {[o.name for o in src.output]})")
        for k, v in {"mirror": str(mirror), "pair": f"{pair[0]}:{pair[1]}", "compare": c.kind,
                     "compare_output": output, "tolerance": repr(c.tolerance),
                     "mirror_timeout_ms": str(c.timeout_ms)}.items():
            cfg.parameters[k].string_value = v
    if capture and capture_version is not None and weights.get(capture_version, 0) > 0:
        output = capture.output or (compare.output if compare else None) or src.output[0].name
        if output not in {o.name for o in src.output}:
            output = src.output[0].name
        for k, v in {"capture_percent": repr(capture.percent), "capture_version": str(capture_version),
                     "capture_output": output, "capture_model": capture_name(model)}.items():
            cfg.parameters[k].string_value = v
    text = text_format.MessageToString(cfg)
    check_config(text, name=cfg.name)
    return text


def is_decoupled(cfg) -> bool:
    """A model that answers with a stream of responses (model_transaction_policy decoupled)."""
    return cfg.HasField("model_transaction_policy") and cfg.model_transaction_policy.decoupled


def router_code(model_config_text: str) -> str:
    """The router's model.py for this model: the streaming token router for decoupled models."""
    return "llm_router_model.py" if is_decoupled(parse_config(model_config_text)) else "router_model.py"


def capture_name(model: str) -> str:
    return f"{model}_capture"


def capture_config(model: str, capture: CaptureParams) -> str:
    """The capture queue (capture_model.py): generic IO, so one config serves every model."""
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    cfg.name, cfg.backend, cfg.max_batch_size = capture_name(model), "python", 0
    for name, dtype in (("RECORD", model_config_pb2.TYPE_STRING), ("TAKE", model_config_pb2.TYPE_INT64)):
        i = cfg.input.add()
        i.name, i.data_type, i.optional = name, dtype, True
        i.dims.append(-1 if name == "RECORD" else 1)
    for name in ("BLOB", "INFO"):
        o = cfg.output.add()
        o.name, o.data_type = name, model_config_pb2.TYPE_STRING
        o.dims.append(-1 if name == "BLOB" else 1)
    g = cfg.instance_group.add()
    g.kind, g.count = model_config_pb2.ModelInstanceGroup.KIND_CPU, 1  # one queue
    cfg.parameters["target_model"].string_value = model
    cfg.parameters["max_rows"].string_value = str(capture.max_rows)
    cfg.parameters["max_bytes"].string_value = str(capture.max_bytes)
    text = text_format.MessageToString(cfg)
    check_config(text, name=cfg.name)
    return text


def agreement_name(model: str) -> str:
    return f"{model}_agreement"


def agreement_config(model: str) -> str:
    """The counters model (agreement_model.py): loaded once per model, never reloaded by a rollout."""
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    cfg.name, cfg.backend, cfg.max_batch_size = agreement_name(model), "python", 0
    for name in ("FIGURES", "STREAM"):  # 6 figures (9 from the causal-LM router); STREAM: agreement_model.py
        i = cfg.input.add()
        i.name, i.data_type, i.optional = name, model_config_pb2.TYPE_FP64, True
        i.dims.append(-1)
    o = cfg.output.add()
    o.name, o.data_type = "OK", model_config_pb2.TYPE_BOOL
    o.dims.append(1)
    g = cfg.instance_group.add()
    g.kind, g.count = model_config_pb2.ModelInstanceGroup.KIND_CPU, 1
    cfg.parameters["target_model"].string_value = model
    text = text_format.MessageToString(cfg)
    check_config(text, name=cfg.name)
    return text


class TritonRouter:
    def __init__(self, triton: TritonControl, model: str, instances: int = 1, compare: Compare | None = None,
                 capture: CaptureParams | None = None):
        self.triton, self.model, self.instances = triton, model, instances
        self.compare = compare or Compare()
        self.capture = capture
        self.name = router_name(model)
        self.files = triton.files  # the same repository, on disk or on S3

    def current(self) -> dict[int, int] | None:
        text = self.files.read_text(f"{self.name}/config.pbtxt")
        try:
            p = parse_config(text).parameters["weights"].string_value if text else None
        except KeyError:
            p = None
        if p is None:
            return None
        return {int(v): int(w) for v, w in (x.split(":") for x in p.split(",") if x)}

    def set_weights(self, weights: dict[int, int], mirror: int = 0, pair: tuple[int, int] | None = None,
                    capture_version: int | None = None) -> None:
        """Write the router config with `weights` (and `mirror` percent of requests compared between the
        versions of `pair`; with capture on, a sample of what `capture_version` answers kept) and (re)load
        it; Triton keeps the old router serving until the new one is ready. A failed reload restores the
        previous config."""
        model_cfg = self.files.read_text(f"{self.model}/config.pbtxt")
        if model_cfg is None:
            raise TritonLoadError(f"{self.model}: no config.pbtxt in the repository {self.triton.repository}")
        try:
            text = router_config(self.model, model_cfg, weights, self.instances, mirror, pair, self.compare,
                                 self.capture, capture_version)
        except ValueError as e:
            raise TritonLoadError(str(e)) from e
        code_file = router_code(model_cfg)
        code = (Path(__file__).parent / code_file).read_bytes()
        if (mirror and pair) or code_file == "llm_router_model.py":  # the LLM router counts every stream there
            self._agreement_counters()
        if "capture_percent" in text:
            self._capture_queue()
        self.files.create_model(self.name, {"1/model.py": code, "config.pbtxt": text.encode()})
        if self.files.read_text(f"{self.name}/1/model.py") != code.decode():
            self.files.write_text(f"{self.name}/1/model.py", code.decode())
        cfg_rel = f"{self.name}/config.pbtxt"
        old = self.files.read_text(cfg_rel)
        if old != text:
            self.files.write_text(cfg_rel, text)
        try:
            self.triton.load(self.name)
        except TritonLoadError:
            if old is not None and old != text:
                self.files.write_text(cfg_rel, old)
            raise

    def _agreement_counters(self) -> None:
        """`<model>_agreement` loaded (once: reloading it would reset the counters the analysis compares
        against its step-start snapshot)."""
        self._side_model(agreement_name(self.model), "agreement_model.py", agreement_config(self.model))

    def _capture_queue(self) -> None:
        """`<model>_capture` loaded, once per rollout (a reload would drop its queue)."""
        self._side_model(capture_name(self.model), "capture_model.py", capture_config(self.model, self.capture))

    def _side_model(self, name: str, code_file: str, config: str) -> None:
        """A helper model of the rollout in the repository and loaded, unless it already serves: its files
        are brought up to date (an earlier rollout's caps, an older Lathe's code) only when it loads."""
        if self.triton.ready_versions(name):
            return
        code = (Path(__file__).parent / code_file).read_text()
        self.files.create_model(name, {"1/model.py": code.encode(), "config.pbtxt": config.encode()})
        for rel, text in (("config.pbtxt", config), ("1/model.py", code)):
            if self.files.read_text(f"{name}/{rel}") != text:
                self.files.write_text(f"{name}/{rel}", text)
        self.triton.load(name)

    def remove(self) -> None:
        self.triton.unload(self.name)


class RouteRefused(TritonLoadError):
    """The API server refused the HTTPRoute (invalid, forbidden, or no Gateway API CRDs): like a
    version Triton cannot load, the step fails and traffic goes back to the stable version."""


class RouteUnavailable(TritonUnavailable):
    """The API server could not be reached or answered 5xx: the step is retried."""


class GatewayRouter:
    def __init__(self, model: str, apply: Callable[[dict], None], **route_opts):
        """apply: called with the HTTPRoute manifest (the operator server-side-applies it).
        route_opts: see rollout.gateway.httproute (namespace, service, port, parent_refs, ...)."""
        self.model, self.apply, self.opts = model, apply, route_opts
        self.last: dict | None = None

    def set_weights(self, weights: dict[int, int], mirror: int = 0, pair: tuple[int, int] | None = None,
                    capture_version: int | None = None) -> None:  # capture: router triton only
        # Agreement is measured by Lathe's router only (validation refuses mirror with router: gateway);
        # a Gateway's RequestMirror filter discards the mirrored answers (docs/serving.md).
        from .gateway import httproute, validate_httproute

        m = httproute(self.model, weights, **self.opts)
        try:
            validate_httproute(m)
        except ValueError as e:
            raise RouteRefused(str(e)) from e
        self.apply(m)
        self.last = m
