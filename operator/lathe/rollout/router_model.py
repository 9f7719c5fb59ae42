"""Lathe traffic router: a Triton python-backend model (`<model>_router`) that forwards every request
to one version of the real model through BLS, split by weight.

Config parameters (rewritten and the router reloaded at each rollout step):
  target_model   the real model's name
  weights        "<version>:<percent>,..." e.g. "3:90,4:10"
Selection is smooth weighted round-robin (deterministic: exact proportions over any window).
`execute` is async: the requests of one batch are forwarded concurrently.
"""

import asyncio
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        self.target = params["target_model"]
        self.weights = []
        for part in params["weights"].split(","):
            v, w = part.split(":")
            if int(w) > 0:
                self.weights.append((int(v), int(w)))
        if not self.weights:
            raise pb_utils.TritonModelException("router has no version with a positive weight")
        self.current = {v: 0 for v, _ in self.weights}
        self.total = sum(w for _, w in self.weights)
        self.inputs = [t["name"] for t in cfg["input"]]
        self.outputs = [t["name"] for t in cfg["output"]]
        pb_utils.Logger.log_info(f"lathe router -> {self.target} weights {self.weights}")

    def _pick(self):
        for v, w in self.weights:
            self.current[v] += w
        best = max(self.weights, key=lambda vw: self.current[vw[0]])[0]
        self.current[best] -= self.total
        return best

    async def _forward(self, request):
        version = self._pick()
        inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in self.inputs]
        inputs = [t for t in inputs if t is not None]
        breq = pb_utils.InferenceRequest(model_name=self.target, model_version=version,
                                         requested_output_names=self.outputs, inputs=inputs)
        bresp = await breq.async_exec()
        if bresp.has_error():
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                f"{self.target} v{version}: {bresp.error().message()}"))
        outs = [pb_utils.get_output_tensor_by_name(bresp, n) for n in self.outputs]
        return pb_utils.InferenceResponse(output_tensors=[t for t in outs if t is not None])

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._forward(r) for r in requests)))

    def finalize(self):
        pass
