"""Lathe agreement counters: a Triton python-backend model (`<model>_agreement`) that holds the
router's answer-comparison figures as Triton custom metrics.

Why a model of its own: the router is reloaded at every rollout step, and Triton removes a custom
metric family when the instance that created it is torn down, even while the new instance uses the same
name (seen on Triton 2.51: every other reload lost the counters). This model is loaded once and never
reloaded by a rollout, so its counters stay cumulative like Triton's own.

Input FIGURES (FP64 [6] or [9]): stable, canary, compared requests, rows, sum of agreement, failure kind
(0 none, 1 error, 2 timeout), and from the causal-LM router (llm_router_model.py) the summed negative
log-likelihood of the scored tokens under stable and under the canary, and the model calls the judgment
made. Output OK (BOOL [1]). Metrics, labels model, stable, canary: lathe_mirror_requests_total,
lathe_mirror_samples_total, lathe_mirror_agreement_total, lathe_mirror_failures_total{reason=error|timeout},
and for causal LMs lathe_mirror_nll_total{side=stable|canary} and lathe_mirror_calls_total.

Input STREAM (FP64 [5], causal-LM router, one per client stream): version, ok (1/0), tokens, seconds to the
first token, seconds from the first to the last token. Metrics, labels model, version: lathe_stream_requests_total,
lathe_stream_failures_total, lathe_stream_tokens_total, lathe_stream_first_token_seconds_total,
lathe_stream_decode_seconds_total: what clients saw, per version (Triton's own request duration of a decoupled
model ends when execute() hands the request to its thread, not with the stream). Both inputs are optional.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.target = cfg["parameters"]["target_model"]["string_value"]
        kind = pb_utils.MetricFamily.COUNTER
        self.families = {  # kept for the model's life: a Metric needs its family
            "requests": pb_utils.MetricFamily("lathe_mirror_requests_total",
                                              "Mirrored requests whose two answers were compared", kind),
            "samples": pb_utils.MetricFamily("lathe_mirror_samples_total", "Rows compared between stable and canary",
                                             kind),
            "agree": pb_utils.MetricFamily("lathe_mirror_agreement_total", "Sum over compared rows of their agreement",
                                           kind),
            "failures": pb_utils.MetricFamily("lathe_mirror_failures_total",
                                              "Mirrored calls that failed or timed out (never seen by clients)", kind),
            "nll": pb_utils.MetricFamily("lathe_mirror_nll_total",
                                         "Causal LMs: summed negative log-likelihood of the scored tokens", kind),
            "calls": pb_utils.MetricFamily("lathe_mirror_calls_total",
                                           "Causal LMs: model calls the router made to judge the canary", kind),
        }
        self.stream_families = {k: pb_utils.MetricFamily(f"lathe_stream_{k}", text, kind) for k, text in (
            ("requests_total", "Causal LMs: client streams the router forwarded"),
            ("failures_total", "Causal LMs: client streams that ended in an error"),
            ("tokens_total", "Causal LMs: tokens streamed to clients"),
            ("first_token_seconds_total", "Causal LMs: summed time to the first token"),
            ("decode_seconds_total", "Causal LMs: summed time from the first to the last token"))}
        self.streams = {}
        self.metrics = {}

    def _metrics(self, stable, canary):
        key = (stable, canary)
        if key not in self.metrics:
            labels = {"model": self.target, "stable": str(stable), "canary": str(canary)}
            f = self.families
            self.metrics[key] = {
                "requests": f["requests"].Metric(labels=labels), "samples": f["samples"].Metric(labels=labels),
                "agree": f["agree"].Metric(labels=labels),
                "error": f["failures"].Metric(labels={**labels, "reason": "error"}),
                "timeout": f["failures"].Metric(labels={**labels, "reason": "timeout"}),
            }
        return self.metrics[key]

    def _nll(self, stable, canary):
        """Created on the first causal-LM figures only: a classifier's rollout shows no NLL series."""
        key = (stable, canary, "nll")
        if key not in self.metrics:
            labels = {"model": self.target, "stable": str(stable), "canary": str(canary)}
            self.metrics[key] = {side: self.families["nll"].Metric(labels={**labels, "side": side})
                                 for side in ("stable", "canary")}
            self.metrics[key]["calls"] = self.families["calls"].Metric(labels=labels)
        return self.metrics[key]

    def _stream(self, figures):
        version, ok, tokens, first_s, decode_s = (float(x) for x in figures[:5])
        v = int(version)
        if v not in self.streams:
            self.streams[v] = {k: f.Metric(labels={"model": self.target, "version": str(v)})
                               for k, f in self.stream_families.items()}
        m = self.streams[v]
        m["requests_total"].increment(1)
        if ok:
            m["tokens_total"].increment(tokens)
            m["first_token_seconds_total"].increment(first_s)
            m["decode_seconds_total"].increment(decode_s)
        else:
            m["failures_total"].increment(1)

    def execute(self, requests):
        out = []
        for r in requests:
            stream = pb_utils.get_input_tensor_by_name(r, "STREAM")
            if stream is not None:
                self._stream(stream.as_numpy().reshape(-1))
            figures = pb_utils.get_input_tensor_by_name(r, "FIGURES")
            if figures is None:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OK", np.array([True]))]))
                continue
            fig = figures.as_numpy().reshape(-1)
            m = self._metrics(int(fig[0]), int(fig[1]))
            if len(fig) >= 9:
                tok = self._nll(int(fig[0]), int(fig[1]))
                tok["calls"].increment(float(fig[8]))
            if int(fig[5]) == 1:
                m["error"].increment(1)
            elif int(fig[5]) == 2:
                m["timeout"].increment(1)
            else:
                m["requests"].increment(float(fig[2]))
                m["samples"].increment(float(fig[3]))
                m["agree"].increment(float(fig[4]))
                if len(fig) >= 9:
                    tok["stable"].increment(float(fig[6]))
                    tok["canary"].increment(float(fig[7]))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OK", np.array([True]))]))
        return out

    def finalize(self):
        self.metrics.clear()  # metrics before their families
        self.streams.clear()
        self.families.clear()
        self.stream_families.clear()
