"""A small client of Triton's generate extension (`/generate` and the Server-Sent Events of `/generate_stream`),
for tests and benchmarks of causal LMs served by Lathe's `genai` flavour. Standard library only.

    stream = generate_stream(url, "lm_router", {"text_input": "def f(", "max_tokens": 16, "stream": True})
    stream.ids, stream.text, stream.first_s, stream.total_s

and `greedy(folder, prompt, max_tokens)`: the same generation run directly with onnxruntime-genai, what a
streamed answer of the same model must equal token for token.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field


class GenerateError(RuntimeError):
    pass


@dataclass
class Stream:
    ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    events: int = 0
    first_s: float | None = None  # first response with a token, from the request's start
    total_s: float = 0.0
    model_version: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _ids(v) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in v] if isinstance(v, list) else [int(v)]  # one id arrives as a bare number


def _post(url: str, path: str, body: dict, timeout: float) -> http.client.HTTPResponse:
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return conn.getresponse()


def generate(url: str, model: str, body: dict, *, version: str = "", timeout: float = 120.0) -> dict:
    """POST /generate: one JSON answer (raises GenerateError with Triton's message)."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/generate"
    r = _post(url, path, body, timeout)
    try:
        data = json.loads(r.read().decode() or "{}")
    finally:
        r.close()
    if r.status != 200 or "error" in data:
        raise GenerateError(f"{model}: HTTP {r.status}: {data.get('error', data)}")
    return data


def generate_stream(url: str, model: str, body: dict, *, version: str = "", timeout: float = 120.0) -> Stream:
    """POST /generate_stream and read every SSE `data:` event until the server closes the stream."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/generate_stream"
    t0 = time.perf_counter()
    r = _post(url, path, body, timeout)
    out = Stream()
    try:
        if r.status != 200:
            raise GenerateError(f"{model}: HTTP {r.status}: {r.read().decode()[:500]}")
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            ev = json.loads(line[5:])
            if "error" in ev:
                raise GenerateError(f"{model}: {ev['error']}")
            out.events += 1
            ids = _ids(ev.get("output_ids"))
            if ids and out.first_s is None:
                out.first_s = time.perf_counter() - t0
            out.ids.extend(ids)
            out.pieces.append(ev.get("text_output", ""))
            out.model_version = ev.get("model_version", out.model_version)
    finally:
        r.close()
    out.total_s = time.perf_counter() - t0
    return out


def greedy(folder, prompt: str, max_tokens: int) -> list[int]:
    """Greedy continuation by onnxruntime-genai in this process (the worker's runtime), for comparison."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    ids = tok.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_tokens, do_sample=False, batch_size=1)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(ids, dtype=np.int32))
    out: list[int] = []
    while not gen.is_done() and len(out) < max_tokens:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def decode(folder, ids: list[int]) -> str:
    import numpy as np
    import onnxruntime_genai as og

    return og.Tokenizer(og.Model(str(folder))).decode(np.asarray(ids, dtype=np.int32))
