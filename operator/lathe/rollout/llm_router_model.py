"""Lathe traffic router for causal LMs: a decoupled Triton python-backend model (`<model>_router`) that
streams every generation request from one version of the real model (a `genai` flavour model, decoupled),
split by weight, and judges the canary on its tokens for a share of the requests.

Config parameters (rewritten and the router reloaded at each rollout step, like router_model.py):
  target_model       the real model's name
  weights            "<version>:<percent>,..." (a version at 0 gets no client traffic)
  mirror             percent of requests whose continuation is scored by both versions (default 0)
  pair               "<stable>:<canary>"
  mirror_timeout_ms  the most each scoring call may take
  max_concurrent     requests in flight per router instance (default 16)
Selection is smooth weighted round-robin and mirroring an accumulator, as in router_model.py.

Each request runs in a thread of its own: the chosen version's responses are forwarded to the client as they
come (one per token with `stream: true`), so the client sees the stream of the version its weight chose and
nothing else. For a mirrored request, after the client's stream has ended:
1. the reference continuation is stable's: the tokens the client just received when stable answered it, or a
   greedy-or-as-asked generation by stable (not streamed, never shown to the client) when the canary did;
2. both versions score prompt + that continuation teacher-forced (one prefill each, the model's `score_ids`
   input): per position the log-probability of the reference token and each version's own top-1;
3. the figures go to `<model>_agreement` (agreement_model.py): compared requests 1, rows = scored tokens,
   agreement = positions where the canary's top-1 equals stable's, both versions' summed negative
   log-likelihood, from which the analysis takes the next-token agreement and the perplexity ratio
   exp((NLL canary - NLL stable) / tokens) = canary perplexity / stable perplexity on stable's tokens, and
   the model calls this judgment made (2 or 3: the analysis tells them from clients bypassing the router).
A failed or timed-out scoring call counts as a mirror failure, never reaches the client.
Every client stream is also counted per version (agreement_model.py STREAM: ok or failed, tokens, time to the
first token and from the first to the last): Triton's own request duration of a decoupled model ends when
execute() returns, and an error response counts as a success, so these are the figures the analysis judges a
causal LM's errors and speed by.
Generation parameters sent as request parameters (Triton's generate endpoint) are passed on as the model's
input tensors, so `/v2/models/<model>_router/generate_stream` takes the same request body as the model.
"""

import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# request parameters the genai model also takes as inputs: name -> numpy type of the input tensor
_AS_INPUTS = {"stream": np.bool_, "chat": np.bool_, "max_tokens": np.int32, "temperature": np.float32, "top_k": np.int32,
              "top_p": np.float32, "seed": np.int64}


def _cast(value, dtype):
    if dtype is np.bool_:
        return bool(value) if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    return dtype(value)


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
        self.pair = None
        self.counter_model = params.get("agreement_model") or f"{self.target}_agreement"
        if self.mirror:
            self.pair = tuple(int(x) for x in params["pair"].split(":"))
            self.timeout_us = int(params.get("mirror_timeout_ms") or 1000) * 1000
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(int(params.get("max_concurrent") or 16))
        self.threads = set()
        pb_utils.Logger.log_info(f"lathe llm router -> {self.target} weights {self.weights} mirror {self.mirror}%")

    def _choose(self):
        """(version to answer, whether this request is scored); under the lock: execute and threads share it."""
        with self.lock:
            for v, w in self.weights:
                self.current[v] += w
            best = max(self.weights, key=lambda vw: self.current[vw[0]])[0]
            self.current[best] -= self.total
            scored = False
            if self.mirror and best in self.pair:
                self.mirror_acc += self.mirror
                if self.mirror_acc >= 100:
                    self.mirror_acc -= 100
                    scored = True
            return best, scored

    def execute(self, requests):
        for request in requests:
            inputs, params = self._inputs(request)
            sender = request.get_response_sender()
            self.slots.acquire()
            t = threading.Thread(target=self._serve, args=(inputs, params, sender), daemon=True)
            with self.lock:
                self.threads.add(t)
            t.start()
        return None

    def _inputs(self, request):
        """The client's tensors, plus its request parameters that the model takes as inputs; and the parameters
        themselves, passed on as they came (BLS takes bool, int and str values), so that the model answers a bad
        one as it would answer the client directly."""
        tensors = {n: pb_utils.get_input_tensor_by_name(request, n) for n in self.inputs}
        out = {n: pb_utils.Tensor(n, t.as_numpy().copy()) for n, t in tensors.items() if t is not None}
        try:
            params = json.loads(request.parameters() or "{}")
        except ValueError:
            params = {}
        for name, dtype in _AS_INPUTS.items():
            if name not in out and name in params and name in self.inputs:
                try:
                    out[name] = pb_utils.Tensor(name, np.array([_cast(params[name], dtype)], dtype=dtype))
                except (TypeError, ValueError):
                    pass  # the parameter goes on as it came: the model refuses it with its own message
        passed = {str(k): v if isinstance(v, (bool, int, str)) else json.dumps(v) if isinstance(v, (list, dict))
                  else str(v) for k, v in params.items()} if isinstance(params, dict) else {}
        return out, passed

    def _request(self, version, inputs, params=None, timeout_us=None):
        kw = {"timeout": timeout_us} if timeout_us else {}
        if params:
            kw["parameters"] = params
        return pb_utils.InferenceRequest(model_name=self.target, model_version=version,
                                         requested_output_names=self.outputs, inputs=list(inputs.values()), **kw)

    def _serve(self, inputs, params, sender):
        version = None
        try:
            version, scored = self._choose()
            if "score_ids" in inputs:
                scored = False  # a scoring request is passed through, never judged itself
            ids = self._stream(version, inputs, params, sender)
            if scored and ids is not None:
                self._judge(version, inputs, ids)
        except Exception as e:  # noqa: BLE001 - the client always gets a final response
            if version is not None and "score_ids" not in inputs:
                self._record_stream([version, 0, 0, 0.0, 0.0])
            try:
                sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                    f"lathe router: {e}")), flags=FINAL)
            except Exception:  # noqa: BLE001 - already final
                pass
        finally:
            self.slots.release()
            with self.lock:
                self.threads.discard(threading.current_thread())

    def _stream(self, version, inputs, params, sender):
        """Forward `version`'s responses to the client as they come; return its generated ids (None on error).
        What the client saw (time to the first token, time from the first to the last, tokens, or a failure)
        goes to the counters model: the analysis' error rate and speed per version for causal LMs."""
        ids = []
        t0 = time.perf_counter()
        first = last = None
        for resp in self._request(version, inputs, params).exec(decoupled=True):
            if resp.has_error():
                sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                    f"{self.target} v{version}: {resp.error().message()}")), flags=FINAL)
                self._record_stream([version, 0, 0, 0.0, 0.0])
                return None
            tensors = resp.output_tensors()
            if not tensors:
                continue  # the model's bare final flag: ours follows the loop
            for t in tensors:
                if t.name() == "output_ids":
                    ids.extend(int(x) for x in t.as_numpy().reshape(-1))
            sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(t.name(), t.as_numpy().copy())
                                                                   for t in tensors]))
            last = time.perf_counter()
            if first is None:
                first = last
        sender.send(flags=FINAL)
        if "score_ids" not in inputs and first is not None:
            self._record_stream([version, 1, len(ids), first - t0, last - first])
        return ids

    def _record_stream(self, figures):
        try:
            req = pb_utils.InferenceRequest(model_name=self.counter_model, requested_output_names=["OK"],
                                            inputs=[pb_utils.Tensor("STREAM", np.array(figures, dtype=np.float64))])
            resp = req.exec()
            if resp.has_error():
                pb_utils.Logger.log_warn(f"lathe llm router: {self.counter_model}: {resp.error().message()}")
        except Exception as e:  # noqa: BLE001 - counting never reaches the client
            pb_utils.Logger.log_warn(f"lathe llm router: counting the stream failed: {e}")

    def _generate(self, version, inputs):
        """A whole continuation from `version`, not streamed (the reference when the canary answered)."""
        ins = dict(inputs)
        ins["stream"] = pb_utils.Tensor("stream", np.array([False]))
        ids = []
        for resp in self._request(version, ins).exec(decoupled=True):
            if resp.has_error():
                raise RuntimeError(resp.error().message())
            for t in resp.output_tensors():
                if t.name() == "output_ids":
                    ids.extend(int(x) for x in t.as_numpy().reshape(-1))
        return ids

    def _score(self, version, inputs, ids):
        prompt = {n: inputs[n] for n in ("text_input", "input_ids", "chat") if n in inputs}  # the same prompt
        prompt["score_ids"] = pb_utils.Tensor("score_ids", np.asarray(ids, dtype=np.int64))
        lp = top = None
        for resp in self._request(version, prompt, timeout_us=self.timeout_us).exec(decoupled=True):
            if resp.has_error():
                raise RuntimeError(resp.error().message())
            for t in resp.output_tensors():
                if t.name() == "token_logprobs":
                    lp = t.as_numpy().astype(np.float64).reshape(-1)
                elif t.name() == "argmax_ids":
                    top = t.as_numpy().reshape(-1)
        if lp is None or top is None or len(lp) != len(ids) or len(top) != len(ids):
            raise RuntimeError(f"v{version} scored {0 if lp is None else len(lp)} of {len(ids)} tokens")
        return lp, top

    def _judge(self, version, inputs, ids):
        stable, canary = self.pair
        calls = 0  # model calls made for this judgment: the analysis tells them from bypassing clients
        try:
            if version == stable:
                ref = ids
            else:
                calls += 1
                ref = self._generate(stable, inputs)
            if not ref:
                return self._record(stable, canary, [0, 0, 0.0, 0, 0.0, 0.0, calls])
            calls += 1
            lp_s, top_s = self._score(stable, inputs, ref)
            calls += 1
            lp_c, top_c = self._score(canary, inputs, ref)
        except Exception as e:  # noqa: BLE001 - a judged copy never reaches the client
            timeout = "timeout" in str(e).lower() or "deadline" in str(e).lower()
            pb_utils.Logger.log_warn(f"lathe llm router: scoring failed: {e}")
            return self._record(stable, canary, [0, 0, 0.0, 2 if timeout else 1, 0.0, 0.0, calls])
        agree = float((top_s == top_c).sum())
        self._record(stable, canary, [1, len(ref), agree, 0, float(-lp_s.sum()), float(-lp_c.sum()), calls])

    def _record(self, stable, canary, figures):
        """FIGURES for `<model>_agreement`: stable, canary, requests, rows, agreement, failure kind, NLL stable,
        NLL canary, model calls made."""
        fig = np.array([stable, canary, *figures], dtype=np.float64)
        req = pb_utils.InferenceRequest(model_name=self.counter_model, requested_output_names=["OK"],
                                        inputs=[pb_utils.Tensor("FIGURES", fig)])
        resp = req.exec()
        if resp.has_error():
            pb_utils.Logger.log_warn(f"lathe llm router: {self.counter_model}: {resp.error().message()}")

    def finalize(self):
        with self.lock:
            running = list(self.threads)
        for t in running:
            t.join(timeout=30)
