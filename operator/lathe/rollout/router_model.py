"""Lathe traffic router: a Triton python-backend model (`<model>_router`) that forwards every request
to one version of the real model through BLS, split by weight, and mirrors a share of the requests to
the other version of the rollout's pair to compare the two answers.

Config parameters (rewritten and the router reloaded at each rollout step):
  target_model       the real model's name
  weights            "<version>:<percent>,..." e.g. "3:90,4:10" (a version at 0 gets no client traffic)
  mirror             percent of requests also sent to the other version of `pair` (default 0)
  pair               "<stable>:<canary>"
  compare            top1 | cosine | close          compare_output  the output compared
  tolerance          for `close`: |canary - stable| <= tolerance * (1 + |stable|) elementwise
  mirror_timeout_ms  the most a mirrored answer is awaited (after the client's answer is sent)
  capture_percent    percent of the requests `capture_version` answers whose inputs (and that answer's
                     `capture_output`) go, as one .npz blob, to `capture_model` (capture_model.py); default 0
Selection is smooth weighted round-robin, mirroring an accumulator: exact proportions over any window.
`execute` is async: the requests of one batch are forwarded concurrently. The client gets the answer of
the version its weight chose as soon as that version answers; the mirrored call is compared in a task
of the backend's event loop, so the client never waits for it and never sees it fail.

The figures go by BLS to `<model>_agreement` (agreement_model.py), which holds them as Triton custom
metrics (labels model, stable, canary): lathe_mirror_requests_total (compared requests),
lathe_mirror_samples_total (compared rows), lathe_mirror_agreement_total (sum over rows of the agreement:
1/0 for top1 and close, the cosine similarity for cosine), lathe_mirror_failures_total{reason=error|timeout}.
"""

import asyncio
import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils

ANSWER = "__lathe_answer__"  # = lathe.rollout.capture.ANSWER (this file runs inside Triton, without lathe)


def agreement(kind, stable, canary, tolerance):
    """Per-row agreement of two answers (rows: the batch dimension)."""
    a = np.asarray(stable, dtype=np.float64).reshape(len(stable), -1)
    b = np.asarray(canary, dtype=np.float64).reshape(len(canary), -1)
    if kind == "top1":
        return (a.argmax(1) == b.argmax(1)).astype(np.float64)
    if kind == "cosine":
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        return (a * b).sum(1) / np.maximum(na * nb, 1e-12)
    return np.all(np.abs(b - a) <= tolerance * (1.0 + np.abs(a)), axis=1).astype(np.float64)


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
        self.mirror = int(params.get("mirror") or 0)
        self.mirror_acc = 0
        self.pending = set()
        if self.mirror:
            stable, canary = (int(x) for x in params["pair"].split(":"))
            self.pair = (stable, canary)
            self.kind = params.get("compare") or "close"
            self.compare_output = params.get("compare_output") or self.outputs[0]
            self.tolerance = float(params.get("tolerance") or 0.01)
            self.timeout = int(params.get("mirror_timeout_ms") or 1000) / 1000.0
            self.counter_model = params.get("agreement_model") or f"{self.target}_agreement"
        self.capture_percent = float(params.get("capture_percent") or 0)
        self.capture_acc = 0.0
        if self.capture_percent:
            self.capture_version = int(params["capture_version"])
            self.capture_model = params.get("capture_model") or f"{self.target}_capture"
            self.capture_output = params.get("capture_output") or self.outputs[0]
        pb_utils.Logger.log_info(f"lathe router -> {self.target} weights {self.weights} mirror {self.mirror}%")

    def _pick(self):
        for v, w in self.weights:
            self.current[v] += w
        best = max(self.weights, key=lambda vw: self.current[vw[0]])[0]
        self.current[best] -= self.total
        return best

    def _mirror_to(self, primary):
        if not self.mirror or primary not in self.pair:
            return None
        self.mirror_acc += self.mirror
        if self.mirror_acc < 100:
            return None
        self.mirror_acc -= 100
        stable, canary = self.pair
        return canary if primary == stable else stable

    def _exec(self, version, inputs):
        return pb_utils.InferenceRequest(model_name=self.target, model_version=version,
                                         requested_output_names=self.outputs, inputs=inputs).async_exec()

    async def _forward(self, request):
        version = self._pick()
        inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in self.inputs]
        inputs = [t for t in inputs if t is not None]
        other = self._mirror_to(version)
        main = asyncio.ensure_future(self._exec(version, inputs))
        shadow = asyncio.ensure_future(self._exec(other, inputs)) if other is not None else None
        bresp = await main
        if bresp.has_error():
            if shadow is not None:
                shadow.cancel()
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                f"{self.target} v{version}: {bresp.error().message()}"))
        outs = [pb_utils.get_output_tensor_by_name(bresp, n) for n in self.outputs]
        if self.capture_percent and version == self.capture_version and self._sampled():
            arrays = {t.name(): t.as_numpy().copy() for t in inputs}
            arrays[ANSWER] = pb_utils.get_output_tensor_by_name(bresp, self.capture_output).as_numpy().copy()
            task = asyncio.ensure_future(self._capture(arrays))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
        if shadow is not None:
            mine = pb_utils.get_output_tensor_by_name(bresp, self.compare_output)
            task = asyncio.ensure_future(self._compare(version, mine.as_numpy().copy(), shadow))
            self.pending.add(task)  # a reference, or the loop may drop the task
            task.add_done_callback(self.pending.discard)
        return pb_utils.InferenceResponse(output_tensors=[t for t in outs if t is not None])

    def _sampled(self):
        self.capture_acc += self.capture_percent
        if self.capture_acc < 100:
            return False
        self.capture_acc -= 100
        return True

    async def _capture(self, arrays):
        """One sampled request to the capture queue, off the client's path; a failure is only logged."""
        try:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            blob = np.array([buf.getvalue()], dtype=np.object_)
            req = pb_utils.InferenceRequest(model_name=self.capture_model, requested_output_names=["INFO"],
                                            inputs=[pb_utils.Tensor("RECORD", blob)])
            resp = await req.async_exec()
            if resp.has_error():
                pb_utils.Logger.log_warn(f"lathe router: {self.capture_model}: {resp.error().message()}")
        except Exception as e:  # noqa: BLE001 - a capture must never reach the client
            pb_utils.Logger.log_warn(f"lathe router: capture failed: {e}")

    async def _compare(self, version, mine, shadow):
        stable, canary = self.pair
        try:
            sresp = await asyncio.wait_for(shadow, self.timeout)
        except TimeoutError:
            return await self._record(stable, canary, 0, 0, 0.0, failure=2)
        except Exception:  # noqa: BLE001 - a mirrored call must never reach the client
            return await self._record(stable, canary, 0, 0, 0.0, failure=1)
        if sresp.has_error():
            return await self._record(stable, canary, 0, 0, 0.0, failure=1)
        theirs = pb_utils.get_output_tensor_by_name(sresp, self.compare_output).as_numpy()
        a, b = (mine, theirs) if version == stable else (theirs, mine)
        try:
            agree = agreement(self.kind, a, b, self.tolerance)
        except ValueError:  # shapes differ: no row agrees
            agree = np.zeros(len(a))
        await self._record(stable, canary, 1, len(agree), float(agree.sum()))

    async def _record(self, stable, canary, requests, rows, agree, failure=0):
        """Add the figures to the counters held by `<model>_agreement` (agreement_model.py)."""
        fig = np.array([[stable, canary, requests, rows, agree, failure]], dtype=np.float64).reshape(6)
        req = pb_utils.InferenceRequest(model_name=self.counter_model, requested_output_names=["OK"],
                                        inputs=[pb_utils.Tensor("FIGURES", fig)])
        resp = await req.async_exec()
        if resp.has_error():
            pb_utils.Logger.log_warn(f"lathe router: {self.counter_model}: {resp.error().message()}")

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._forward(r) for r in requests)))

    def finalize(self):
        for t in list(self.pending):
            t.cancel()
