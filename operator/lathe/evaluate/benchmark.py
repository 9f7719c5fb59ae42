"""Benchmark harness: candidates are timed in interleaved rounds (the machine drifts ±20-30% over
a run), after warm-up, with the thread count fixed by the runner.

One statistic serves the speedup column, its interval and the selection: per round r, each
candidate's median latency m[r]; the speedup is the geometric mean over rounds of the paired ratios
m_baseline[r] / m_candidate[r], with a Student t interval on their logarithms. Each candidate's
reported p50 is the geometric mean of its round medians, so speedup = p50_baseline / p50_candidate
exactly and no table can show a faster p50 beside a smaller speedup. Throughput is measured per
round (samples / seconds spent in the timed calls) and summarised the same way."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("lathe.evaluate.benchmark")

Feeds = dict[str, np.ndarray]

# Fewer timed calls than this and a p99 is a statement about 1-4 samples, i.e. about whichever
# calls the scheduler happened to preempt: it is reported as not measured instead.
MIN_P99_SAMPLES = 500
# Two-sided 95% Student t quantiles by degrees of freedom (rounds - 1).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    if df <= 0:
        return math.inf
    return next((_T975[k] for k in sorted(_T975) if k >= df), 1.96)


@dataclass
class Ratio:
    """A paired ratio against the baseline: geometric mean over rounds and its 95% interval."""
    value: float
    low: float
    high: float
    rounds: int

    @classmethod
    def of(cls, ratios: list[float]) -> Ratio | None:
        logs = [math.log(r) for r in ratios if r > 0 and math.isfinite(r)]
        if not logs:
            return None
        mean = float(np.mean(logs))
        if len(logs) < 2:
            return cls(math.exp(mean), 0.0, math.inf, len(logs))
        half = t975(len(logs) - 1) * float(np.std(logs, ddof=1)) / math.sqrt(len(logs))
        return cls(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(logs))

    def faster(self) -> bool:
        """True when the whole interval lies above 1.0: measurably faster than the baseline."""
        return self.low > 1.0


def geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x > 0]
    return float(math.exp(np.mean(np.log(xs)))) if xs else float("nan")


@dataclass
class Timing:
    batch: int
    samples_ms: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    round_throughputs: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float | None:
        """A percentile of the pooled calls; None for tail percentiles the sample cannot support."""
        if not self.samples_ms or (q > 95 and len(self.samples_ms) < MIN_P99_SAMPLES):
            return None
        return float(np.percentile(self.samples_ms, q))

    @property
    def p50(self) -> float:
        """Geometric mean of the round medians (the statistic the speedup is made of)."""
        return geomean(self.round_medians)

    @property
    def throughput(self) -> float:
        """Samples per second while timed, geometric mean over rounds (measured, not 1/p50)."""
        return geomean(self.round_throughputs) if self.round_throughputs else 0.0


@dataclass
class BenchResult:
    name: str
    timings: dict[int, Timing] = field(default_factory=dict)
    latency: Ratio | None = None  # p50 ratio at the first batch size
    throughput: Ratio | None = None  # throughput ratio at the largest batch size
    ratios: list[float] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        return self.latency.value if self.latency else None


# times `iters` calls of one runner on one batch, in ms each: the host clock by default; a GPU engine's own timer
# (CUDA events on its stream, backends/tensorrt.py) leaves host-side copies and launch queues out of the figure
Timer = Callable[[Feeds, int], list[float]]


def host_timer(run: Callable[[Feeds], list]) -> Timer:
    def timed(x: Feeds, iters: int) -> list[float]:
        lat = []
        for _ in range(iters):
            t0 = time.perf_counter()
            run(x)
            lat.append((time.perf_counter() - t0) * 1000.0)
        return lat

    return timed


def _iters(cell: float, per_call_s: float, min_iters: int, max_iters: int) -> int:
    return int(min(max_iters, max(min_iters, round(cell / max(per_call_s, 1e-6)))))


def _time_round(res: dict[str, BenchResult], timer: dict[str, Timer], feeds: Feeds, batch: int, order: list[str],
                iters: dict[str, int], after: Callable[[str], None] | None = None) -> None:
    """One interleaved round at one batch size: every runner in `order` times its cell once."""
    for name in order:
        lat = timer[name](feeds, iters[name])
        t = res[name].timings[batch]
        t.samples_ms.extend(lat)
        t.round_medians.append(float(np.median(lat)))
        t.round_throughputs.append(batch * len(lat) / (sum(lat) / 1000.0))
        if after is not None:
            after(name)


def _summarise(res: dict[str, BenchResult], baseline: str, first: int, largest: int) -> None:
    """Every runner's paired ratios against the baseline, from the rounds timed so far."""
    base = res[baseline].timings
    for r in res.values():
        mine = r.timings
        r.ratios = [bm / cm for bm, cm in zip(base[first].round_medians, mine[first].round_medians, strict=True)
                    if cm > 0]
        r.latency = Ratio.of(r.ratios)
        r.throughput = Ratio.of([cm / bm for bm, cm in zip(base[largest].round_throughputs,
                                                           mine[largest].round_throughputs, strict=True) if bm > 0])


def benchmark(runners: dict[str, Callable[[Feeds], list]], feeds: dict[int, Feeds], baseline: str,
              rounds: int = 5, seconds: float = 30.0, warmup: int = 2, min_iters: int = 3, max_iters: int = 5000,
              progress: Callable[[str, float, str], None] | None = None,
              timers: dict[str, Timer] | None = None) -> dict[str, BenchResult]:
    """`feeds` maps batch size -> a batch; the first batch size decides the latency speedup, the
    largest the throughput gain. Each (candidate, batch, round) cell gets an equal share of
    `seconds` (at least `min_iters` calls). `timers` replaces the host clock for some runners."""
    names = list(runners)
    timer = {n: (timers or {}).get(n) or host_timer(runners[n]) for n in names}
    batches = list(feeds)
    est: dict[tuple[str, int], float] = {}
    for name in names:
        for b in batches:
            if progress is not None:  # a worker killed for memory is read from its last such line
                progress("benchmark", 0.0, f"warm-up batch {b} {name}")
            for _ in range(warmup):
                runners[name](feeds[b])
            t0 = time.perf_counter()
            runners[name](feeds[b])
            est[(name, b)] = max(time.perf_counter() - t0, 1e-6)
    cell = seconds / max(1, len(names) * len(batches) * rounds)
    iters = {k: _iters(cell, v, min_iters, max_iters) for k, v in est.items()}
    res = {n: BenchResult(n, {b: Timing(b) for b in batches}) for n in names}
    total = rounds * len(names) * len(batches)
    done = 0
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for b in batches:
            def step(name: str, r: int = r, b: int = b) -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress("benchmark", done / total, f"round {r + 1}/{rounds} batch {b} {name}")

            _time_round(res, timer, feeds[b], b, order, {n: iters[(n, b)] for n in names}, step)
    _summarise(res, baseline, batches[0], max(batches))
    return res


@dataclass
class ExtraRounds:
    """What `more_rounds` added: rounds, wall seconds, and the longest round (what a budget can overshoot by)."""
    rounds: int = 0
    seconds: float = 0.0
    longest_round: float = 0.0
    settled: bool = False


def more_rounds(res: dict[str, BenchResult], runners: dict[str, Callable[[Feeds], list]], feeds: dict[int, Feeds],
                baseline: str, batch: int, cell_seconds: float, budget_seconds: float,
                settled: Callable[[int], bool], check_every: int = 2, max_rounds: int = 200,
                min_iters: int = 3, max_iters: int = 5000, timers: dict[str, Timer] | None = None,
                progress: Callable[[str, float, str], None] | None = None) -> ExtraRounds:
    """Further interleaved rounds of every runner in `res` at one batch size (the one that decides),
    each cell sized as in the first rounds (`cell_seconds` of calls), appended to the same timings so
    that every statistic stays one statistic over all rounds. Every `check_every` rounds the ratios
    are recomputed and `settled(rounds added)` asked whether to stop. A round is started only while
    the time it is expected to take (the longest so far, or its cells' estimate) still fits in
    `budget_seconds`; `max_rounds` caps the rounds whatever the budget."""
    names = list(res)
    timer = {n: (timers or {}).get(n) or host_timer(runners[n]) for n in names}
    per_call = {n: max(float(np.median(res[n].timings[batch].samples_ms)) / 1000.0, 1e-6)
                if res[n].timings[batch].samples_ms else cell_seconds for n in names}
    iters = {n: _iters(cell_seconds, per_call[n], min_iters, max_iters) for n in names}
    expected = sum(iters[n] * per_call[n] for n in names)
    batches = list(res[baseline].timings)
    done = ExtraRounds()
    start = len(res[baseline].timings[batch].round_medians)
    t_start = time.perf_counter()
    while done.rounds < max_rounds and done.seconds + max(expected, done.longest_round) <= budget_seconds:
        r = start + done.rounds
        order = names[r % len(names):] + names[: r % len(names)]
        t0 = time.perf_counter()
        _time_round(res, timer, feeds[batch], batch, order, iters)
        done.longest_round = max(done.longest_round, time.perf_counter() - t0)
        done.rounds += 1
        done.seconds = time.perf_counter() - t_start
        if progress is not None:
            progress("benchmark", min(1.0, done.seconds / budget_seconds) if budget_seconds > 0 else 1.0,
                     f"tie-break round {done.rounds} batch {batch}")
        if done.rounds % max(1, check_every) == 0:
            _summarise(res, baseline, batches[0], max(batches))
            if settled(done.rounds):
                done.settled = True
                break
    _summarise(res, baseline, batches[0], max(batches))
    return done
