"""Triton python-backend model written by Lathe's `genai` flavour: a causal LM served with onnxruntime-genai.

Decoupled (`model_transaction_policy { decoupled: true }`): one request, one or many responses, the last one
flagged final. It runs the onnxruntime-genai model folder of its version (model.onnx, model.onnx.data,
genai_config.json, tokenizer files) and answers two kinds of request:

Generation (Triton's generate extension: `POST /v2/models/<m>/generate` and `/generate_stream`):
  text_input   BYTES [1]  the prompt (or `input_ids` INT64 [-1], already tokenized)
  chat         BOOL  [1]  true: text_input is a user's message, put in the model's chat template (instruct
                          models answer raw text poorly); false or absent: the text as it is
  stream       BOOL  [1]  true: one response per generated token (what generate_stream clients want); false
                          or absent: one response with the whole continuation (what /generate accepts)
  max_tokens   INT32 [1]  new tokens at most (default 64; the model's context length caps prompt + output)
  temperature  FP32  [1]  0 or absent: greedy; > 0: sampling with top_k / top_p (INT32 / FP32 [1]) and
                          seed (INT64 [1])
  Each of these can also come as a request parameter (the generate endpoint's "parameters" object); an input
  tensor wins over a parameter of the same name.
  -> text_output BYTES [1] (the new text; streamed: this token's share, which may be empty while a character's
     bytes are incomplete) and output_ids INT64 [-1] (the new token ids of this response).

Scoring (teacher-forced, what the token canary sends): `score_ids` INT64 [-1] present.
  The sequence prompt + score_ids goes through one prefill; for every position of score_ids the response holds
  token_logprobs FP32 [-1] (log-probability of that token given everything before it) and argmax_ids INT64 [-1]
  (the model's own top-1 there). One response.

Config parameters:
  intra_op_threads  ONNX Runtime intra-op threads of the shared model (default 1)
  max_concurrent    requests in flight per instance (default 4): each runs in its own thread with its own
                    generator over one loaded model, so a short scoring request never waits behind a long
                    generation
A request the model cannot serve (no prompt, a prompt longer than the context, ids outside the vocabulary)
gets an error response; a client that cancels its stream stops the generation at the next token.
"""

import json
import os
import threading

import numpy as np
import onnxruntime_genai as og
import triton_python_backend_utils as pb_utils

DEFAULT_MAX_TOKENS = 64
_PARAMS = {"stream": bool, "chat": bool, "max_tokens": int, "temperature": float, "top_k": int, "top_p": float,
           "seed": int}


class BadRequest(ValueError):
    pass


def _scalar(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return None
    a = t.as_numpy().reshape(-1)
    return a[0].item() if a.size else None


def _text(request):
    t = pb_utils.get_input_tensor_by_name(request, "text_input")
    if t is None:
        return None
    a = t.as_numpy().reshape(-1)
    if not a.size:
        return None
    v = a[0]
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _ids(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy().reshape(-1).astype(np.int64)


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.version = args["model_version"]
        vdir = os.path.join(args["model_repository"], self.version)
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        threads = int(params.get("intra_op_threads", "1") or 1)
        config = og.Config(vdir)
        config.clear_providers()  # CPU
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        with open(os.path.join(vdir, "genai_config.json")) as f:
            gc = json.load(f)["model"]
        self.context = int(gc.get("context_length") or 2048)
        self.vocab = int(gc.get("vocab_size") or 0)
        self.slots = threading.BoundedSemaphore(int(params.get("max_concurrent", "4") or 4))
        self.threads = set()
        self.lock = threading.Lock()
        self.closing = False
        pb_utils.Logger.log_info(f"lathe genai v{self.version}: {vdir} (context {self.context}, "
                                 f"vocab {self.vocab}, {threads} threads)")

    # ------------------------------------------------------------------------------------------ requests
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                job = self._parse(request)
            except BadRequest as e:
                self._fail(sender, str(e))
                continue
            self.slots.acquire()  # back-pressure: execute blocks while max_concurrent requests run
            t = threading.Thread(target=self._run, args=(job, sender), daemon=True)
            with self.lock:
                self.threads.add(t)
            t.start()
        return None

    def _parse(self, request):
        p = {}
        try:
            raw = json.loads(request.parameters() or "{}")
        except ValueError:
            raw = {}
        for k, cast in _PARAMS.items():
            v = _scalar(request, k)
            if v is None:
                v = raw.get(k)
            if v is not None:
                try:
                    p[k] = v if cast is bool and isinstance(v, bool) else (
                        str(v).lower() in ("1", "true", "yes") if cast is bool else cast(v))
                except (TypeError, ValueError):
                    raise BadRequest(f"parameter {k}={v!r} is not a {cast.__name__}") from None
        prompt = _ids(request, "input_ids")
        if prompt is None:
            text = _text(request)
            if text is None:
                raise BadRequest("no prompt: send text_input (or input_ids)")
            if p.get("chat"):
                text = self._chat(text)
            prompt = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
        score = _ids(request, "score_ids")
        seq = prompt if score is None else np.concatenate([prompt, score])
        if not len(prompt):
            raise BadRequest("the prompt has no tokens")
        if self.vocab and (seq.min() < 0 or seq.max() >= self.vocab):
            raise BadRequest(f"token ids outside the vocabulary (0..{self.vocab - 1})")
        if len(seq) + (0 if score is not None else 1) > self.context:
            raise BadRequest(f"{len(seq)} tokens do not fit the model's context of {self.context}")
        max_tokens = p.get("max_tokens", DEFAULT_MAX_TOKENS)
        if max_tokens < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}")
        return {"prompt": prompt, "score": score, "params": p, "request": request,
                "max_tokens": min(max_tokens, self.context - len(prompt))}

    def _chat(self, text):
        try:
            return self.tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": text}]),
                                                      add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - onnxruntime-genai raises RuntimeError without a template
            raise BadRequest(f"chat: this model has no usable chat template ({e})") from None

    def _run(self, job, sender):
        try:
            if job["score"] is not None:
                self._score(job, sender)
            else:
                self._generate(job, sender)
        except Exception as e:  # noqa: BLE001 - every request ends with a final response
            self._fail(sender, f"generation failed: {e}")
        finally:
            self.slots.release()
            with self.lock:
                self.threads.discard(threading.current_thread())

    def _search(self, prompt_len, max_length, p):
        params = og.GeneratorParams(self.model)
        opts = {"max_length": max_length, "batch_size": 1}
        temperature = p.get("temperature", 0.0)
        if temperature and temperature > 0:
            opts.update(do_sample=True, temperature=temperature, top_k=p.get("top_k", 0) or 0,
                        top_p=p.get("top_p", 1.0))
            if "seed" in p:
                opts["random_seed"] = p["seed"]
        else:
            opts["do_sample"] = False
        params.set_search_options(**opts)
        return params

    def _generate(self, job, sender):
        prompt, p = job["prompt"], job["params"]
        stream = bool(p.get("stream", False))
        gen = og.Generator(self.model, self._search(len(prompt), len(prompt) + job["max_tokens"], p))
        gen.append_tokens(prompt.astype(np.int32))
        detok = self.tokenizer.create_stream()
        ids, pieces = [], []
        request = job["request"]
        while not gen.is_done() and len(ids) < job["max_tokens"]:
            if self.closing or request.is_cancelled():
                break
            gen.generate_next_token()
            tok = int(gen.get_next_tokens()[0])
            ids.append(tok)
            piece = detok.decode(tok)
            if stream:
                last = gen.is_done() or len(ids) >= job["max_tokens"]
                sender.send(self._tokens_response([tok], piece),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last else 0)
                if last:
                    return
            else:
                pieces.append(piece)
        if stream:  # cancelled or closing before the last token: end the stream
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        sender.send(self._tokens_response(ids, "".join(pieces)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _tokens_response(ids, text):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("output_ids", np.asarray(ids, dtype=np.int64))])

    def _score(self, job, sender):
        """Teacher-forced: one prefill of prompt + continuation; the logits of every position come back at once."""
        prompt, score = job["prompt"], job["score"]
        seq = np.concatenate([prompt, score])
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(seq) + 1, batch_size=1, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.append_tokens(seq.astype(np.int32))
        logits = np.asarray(gen.get_output("logits"), dtype=np.float32).reshape(len(seq), -1)
        rows = logits[len(prompt) - 1:len(seq) - 1].astype(np.float64)  # row i predicts score[i]
        top = rows.max(axis=1, keepdims=True)
        logz = (top + np.log(np.exp(rows - top).sum(axis=1, keepdims=True))).reshape(-1)
        lp = rows[np.arange(len(score)), score] - logz
        sender.send(pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("token_logprobs", lp.astype(np.float32)),
            pb_utils.Tensor("argmax_ids", rows.argmax(axis=1).astype(np.int64))]),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _fail(sender, message):
        sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        self.closing = True
        with self.lock:
            running = list(self.threads)
        for t in running:
            t.join(timeout=30)
        self.model = self.tokenizer = None
