"""The generation runtime over a model folder (onnxruntime-genai): greedy generation, and the timed units the
benchmark repeats: time to first token, time per decoded token, and tokens/s of concurrent streams.

The same runtime serves the published model in Triton (serving/genai_flavour.py), so what is timed here is
what a client waits for."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import WorkerError


class Generator:
    def __init__(self, folder: Path, threads: int = 0):
        import onnxruntime_genai as og  # noqa: PLC0415

        self.og = og
        self.folder = Path(folder)
        self.threads = threads
        cfg = og.Config(str(folder))
        if threads:
            cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        try:
            self.model = og.Model(cfg)
        except Exception as e:  # ONNX Runtime refuses the graph (a type it has no kernel for, a bad initializer)
            raise WorkerError("load", f"onnxruntime-genai cannot load {folder}: {str(e).splitlines()[0][:400]}") from e

    def _generator(self, prompt: list[int], new_tokens: int, force: bool):
        p = self.og.GeneratorParams(self.model)
        total = len(prompt) + new_tokens
        # force: the end-of-sequence token is held back until `new_tokens` are out, so every timed call decodes
        # as many tokens as the others
        p.set_search_options(do_sample=False, max_length=total, min_length=total if force else 0)
        g = self.og.Generator(self.model, p)
        g.append_tokens(np.asarray(prompt, dtype=np.int32))
        return g

    def greedy(self, prompt: list[int], new_tokens: int) -> list[int]:
        g = self._generator(prompt, new_tokens, force=False)
        out: list[int] = []
        while not g.is_done() and len(out) < new_tokens:
            g.generate_next_token()
            out.append(int(g.get_next_tokens()[0]))
        return out

    def first_token_ms(self, prompt: list[int]) -> float:
        """Prefill of the prompt and the first generated token, as a client sees it."""
        t0 = time.perf_counter()
        g = self._generator(prompt, 1, force=True)
        g.generate_next_token()
        g.get_next_tokens()
        return (time.perf_counter() - t0) * 1000.0

    def decode_ms(self, prompt: list[int], new_tokens: int) -> float:
        """Mean time per token over `new_tokens` tokens decoded after the first (prefill left out)."""
        g = self._generator(prompt, new_tokens + 1, force=True)
        g.generate_next_token()
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            g.generate_next_token()
        g.get_next_tokens()
        return (time.perf_counter() - t0) * 1000.0 / new_tokens

    def streams_ms(self, prompt: list[int], new_tokens: int, streams: int) -> float:
        """Wall time per token while `streams` generations of `new_tokens` run at once on this one model (the
        way concurrent requests share a served model instance): 1000 / this = the aggregate tokens/s."""
        gens = [self._generator(prompt, new_tokens, force=True) for _ in range(streams)]
        errors: list[BaseException] = []
        start = threading.Barrier(streams + 1)

        def work(g):
            try:
                start.wait()
                for _ in range(new_tokens):
                    g.generate_next_token()
            except BaseException as e:  # reported below: a failed stream must not pass as a fast one
                errors.append(e)

        threads = [threading.Thread(target=work, args=(g,), daemon=True) for g in gens]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if errors:
            raise WorkerError("benchmark", f"a concurrent stream failed: {errors[0]}")
        return wall * 1000.0 / (streams * new_tokens)
