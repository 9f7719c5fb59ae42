"""Triton python-backend model written by Lathe's `python` flavour into every version directory.

Runs `<version>/model.onnx` with ONNX Runtime inside Triton; inputs and outputs come from the model's
config (names, types), so the same file serves any ONNX model. Config parameters:
  intra_op_threads   ONNX Runtime intra-op threads per instance (default 1)

Test-only fault injection: when the server process has LATHE_ALLOW_FAULT_INJECTION=1 in its
environment and `<version>/fault.json` exists ({"sleep_ms": 30, "fail_rate": 1.0}), every request
sleeps and/or fails. Without the variable the file is ignored.
"""

import json
import os
import random
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.version = args["model_version"]
        vdir = os.path.join(args["model_repository"], self.version)
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("intra_op_threads", "1") or 1)
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(os.path.join(vdir, "model.onnx"), so, providers=["CPUExecutionProvider"])
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in cfg["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in cfg["output"]]
        onnx_types = {i.name: i.type for i in self.sess.get_inputs()}
        self.cast = {n: _ORT_TO_NP.get(onnx_types.get(n, ""), dt) for n, dt in self.inputs}
        self.fault = {}
        fpath = os.path.join(vdir, "fault.json")
        if os.environ.get("LATHE_ALLOW_FAULT_INJECTION") == "1" and os.path.exists(fpath):
            with open(fpath) as f:
                self.fault = json.load(f)
            pb_utils.Logger.log_warn(f"lathe: fault injection active for version {self.version}: {self.fault}")

    def execute(self, requests):
        sleep_s = float(self.fault.get("sleep_ms", 0)) / 1000.0
        fail_rate = float(self.fault.get("fail_rate", 0))
        responses = []
        for request in requests:
            if sleep_s:
                time.sleep(sleep_s)
            if fail_rate and random.random() < fail_rate:
                raise pb_utils.TritonModelException("injected failure (lathe test fault)")  # see below
            try:
                feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy().astype(self.cast[n], copy=False)
                        for n, _ in self.inputs}
                outs = self.sess.run([n for n, _ in self.outputs], feed)
            except Exception as e:
                # Raise rather than return an error response: Triton 2.51's python backend counts error
                # *responses* in nv_inference_request_success; only an exception from execute() lands in
                # nv_inference_request_failure, which the canary analysis reads. (Fails the whole batch.)
                raise pb_utils.TritonModelException(f"inference failed: {e}") from None
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(n, np.ascontiguousarray(o.astype(dt, copy=False)))
                for (n, dt), o in zip(self.outputs, outs, strict=True)]))
        return responses

    def finalize(self):
        self.sess = None


_ORT_TO_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
