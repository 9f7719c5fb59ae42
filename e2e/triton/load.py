"""Bounded load generator for Triton (threads, fixed rate, fixed maximum request count)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


class Load:
    """Send `x` to `model` (optionally one version) at `rate` req/s from `threads` threads until `stop()`
    or `max_requests` were sent."""

    def __init__(self, url: str, model: str, x: np.ndarray, *, version: str = "", rate: float = 50.0,
                 threads: int = 2, max_requests: int = 2000, input_name: str = "input", output_name: str = "logits"):
        self.url, self.model, self.x, self.version = url, model, x, version
        self.rate, self.threads, self.max_requests = rate, threads, max_requests
        self.input_name, self.output_name = input_name, output_name
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._sent = 0
        self._stop = threading.Event()
        self._ts: list[threading.Thread] = []

    def _worker(self, i: int):
        import tritonclient.http as http

        c = http.InferenceServerClient(self.url, network_timeout=30)
        interval = self.threads / self.rate
        nxt = time.perf_counter() + i * interval / self.threads
        inp = http.InferInput(self.input_name, list(self.x.shape), "FP32")
        inp.set_data_from_numpy(self.x)
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self._sent >= self.max_requests:
                        return
                    self._sent += 1
                delay = nxt - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                nxt += interval
                t = time.perf_counter()
                try:
                    c.infer(self.model, [inp], model_version=self.version).as_numpy(self.output_name)
                    dt = (time.perf_counter() - t) * 1000
                    with self._lock:
                        self.result.ok += 1
                        self.result.latencies_ms.append(dt)
                except Exception as e:  # noqa: BLE001 - record every failure
                    with self._lock:
                        self.result.failed += 1
                        if len(self.result.errors) < 20:
                            self.result.errors.append(str(e)[:300])
        finally:
            c.close()

    def start(self) -> Load:
        self._ts = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(self.threads)]
        for t in self._ts:
            t.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._ts:
            t.join(60)
        return self.result

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
