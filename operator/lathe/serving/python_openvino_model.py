"""Triton python-backend model written by Lathe's `python` flavour for OpenVINO winners.

Runs `<version>/model.xml` (+ model.bin) with OpenVINO on CPU inside Triton; input and output names and
types come from the model's config. Config parameters:
  inference_num_threads   OpenVINO INFERENCE_NUM_THREADS per instance (default 1)
  inference_precision     CPU INFERENCE_PRECISION_HINT (default f32: what the worker validated)
"""

import json
import os

import numpy as np
import openvino as ov
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.version = args["model_version"]
        vdir = os.path.join(args["model_repository"], self.version)
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        props = {"PERFORMANCE_HINT": "LATENCY",
                 "INFERENCE_PRECISION_HINT": params.get("inference_precision", "f32") or "f32",
                 "INFERENCE_NUM_THREADS": int(params.get("inference_num_threads", "1") or 1)}
        core = ov.Core()
        self.compiled = core.compile_model(os.path.join(vdir, "model.xml"), "CPU", props)
        self.request = self.compiled.create_infer_request()
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in cfg["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in cfg["output"]]
        self.ports = {n: self.compiled.output(n) for n, _ in self.outputs}

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feed = {n: np.ascontiguousarray(pb_utils.get_input_tensor_by_name(request, n).as_numpy().astype(dt, copy=False))
                        for n, dt in self.inputs}
                res = self.request.infer(feed)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(n, np.ascontiguousarray(np.asarray(res[self.ports[n]]).astype(dt, copy=False)))
                    for n, dt in self.outputs]))
            except Exception as e:  # one bad request must not take the others down
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))))
        return responses

    def finalize(self):
        self.request = None
        self.compiled = None
