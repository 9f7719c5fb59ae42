"""Benchmark harness: candidates are timed in interleaved rounds (the machine drifts ±20-30% over
a run), after warm-up, with the thread count fixed by the runner. Speedup is the median over rounds
of baseline-median / candidate-median within the same round, at the first batch size."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("lathe.evaluate.benchmark")

Feeds = dict[str, np.ndarray]


@dataclass
class Timing:
    batch: int
    samples_ms: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q)) if self.samples_ms else float("nan")

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def throughput(self) -> float:
        return self.batch / (self.p50 / 1000.0) if self.samples_ms else 0.0


@dataclass
class BenchResult:
    name: str
    timings: dict[int, Timing] = field(default_factory=dict)
    speedup: float | None = None
    ratios: list[float] = field(default_factory=list)


def benchmark(runners: dict[str, Callable[[Feeds], list]], feeds: dict[int, Feeds], baseline: str,
              rounds: int = 5, seconds: float = 30.0, warmup: int = 2, min_iters: int = 3, max_iters: int = 200,
              progress: Callable[[str, float, str], None] | None = None) -> dict[str, BenchResult]:
    """`feeds` maps batch size -> a batch; the first batch size decides the speedup."""
    names = list(runners)
    batches = list(feeds)
    # warm-up and per-call estimate
    est: dict[tuple[str, int], float] = {}
    for name in names:
        for b in batches:
            for _ in range(warmup):
                runners[name](feeds[b])
            t0 = time.perf_counter()
            runners[name](feeds[b])
            est[(name, b)] = max(time.perf_counter() - t0, 1e-5)
    cell = seconds / max(1, len(names) * len(batches) * rounds)
    iters = {k: int(min(max_iters, max(min_iters, round(cell / v)))) for k, v in est.items()}
    res = {n: BenchResult(n, {b: Timing(b) for b in batches}) for n in names}
    total = rounds * len(names) * len(batches)
    done = 0
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for b in batches:
            for name in order:
                run = runners[name]
                x = feeds[b]
                lat = []
                for _ in range(iters[(name, b)]):
                    t0 = time.perf_counter()
                    run(x)
                    lat.append((time.perf_counter() - t0) * 1000.0)
                t = res[name].timings[b]
                t.samples_ms.extend(lat)
                t.round_medians.append(float(np.median(lat)))
                done += 1
                if progress is not None:
                    progress("benchmark", done / total, f"round {r + 1}/{rounds} batch {b} {name}")
    first = batches[0]
    base = res[baseline].timings[first].round_medians
    for name in names:
        mine = res[name].timings[first].round_medians
        ratios = [bm / cm for bm, cm in zip(base, mine, strict=True) if cm > 0]
        res[name].ratios = ratios
        res[name].speedup = float(np.median(ratios)) if ratios else None
    return res
