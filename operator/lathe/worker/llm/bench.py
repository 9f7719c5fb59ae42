"""Timing of causal LMs with the statistic every Lathe benchmark uses (evaluate/benchmark.py): each scenario is
timed in interleaved rounds, each candidate's figure is the geometric mean of its round medians, and its ratio
against the FP32 baseline is the geometric mean of the per-round paired ratios with a Student t 95% interval.

Scenarios, each on the generation runtime with greedy search:
- first token at each of target.promptTokens: prefill of a prompt of that many tokens (validation text) plus
  the first generated token, as a client waits for it;
- decode: time per token of 16 tokens decoded after the first, one stream at batch 1 (after a 32-token prompt),
  reported as tokens/s;
- streams: target.streams generations decoding at once on the one loaded model (the way concurrent requests
  share a served instance), reported as aggregate tokens/s;
- peak memory: the resident memory a fresh load of the model adds while it prefills the longest prompt and
  decodes (weights + KV cache + runtime buffers; evaluate/memory.py).

Which ratio is a candidate's `speedup` follows spec.objective: latency -> decode, first-token -> first token at
the first prompt length, throughput -> streams, size -> decode."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ...evaluate.benchmark import Ratio, Timing, benchmark
from ...evaluate.memory import peak_added_mb

log = logging.getLogger("lathe.worker.llm.bench")

DECODE_TOKENS = 16
STREAM_TOKENS = 8
SHORT_PROMPT = 32  # tokens before the decode and stream figures: their prefill is not timed, only waited for
# share of the benchmark's seconds per scenario
SHARES = {"decode": 0.4, "first-token": 0.3, "streams": 0.3}


@dataclass
class LlmTiming:
    first_token_ms: dict[str, float] = field(default_factory=dict)
    decode_tps: float | None = None
    decode_tps_low: float | None = None
    decode_tps_high: float | None = None
    decode_samples: int = 0
    stream_tps: float | None = None
    streams: int | None = None
    speedup: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    peak_memory_mb: float | None = None


@dataclass
class Measured:
    results: dict[str, LlmTiming]
    basis: str
    details: dict[str, Any]


def _timer(unit):
    """A benchmark Timer whose figure per call is what `unit()` returns (ms per token, ms to first token),
    not the call's wall time (which holds the prefill a decode figure leaves out)."""
    def timed(_feeds, iters: int) -> list[float]:
        return [unit() for _ in range(iters)]
    return timed


def _scenario(units: dict[str, Any], rounds: int, seconds: float, progress, label: str):
    runners = {n: (lambda _f, u=u: u()) for n, u in units.items()}
    timers = {n: _timer(u) for n, u in units.items()}

    def prog(stage, fraction, message):
        if progress is not None:
            progress(f"benchmark {label}", fraction, message)

    # no warm-up call beyond the benchmark's own untimed first call: one FP32 prefill of 512 tokens is seconds
    return benchmark(runners, {1: {}}, "baseline", rounds=rounds, seconds=seconds, warmup=0, min_iters=1,
                     max_iters=50, progress=prog, timers=timers)


def _interval(r) -> tuple[float | None, float | None, float | None]:
    ratio: Ratio | None = r.latency
    if ratio is None:
        return None, None, None
    return round(ratio.value, 4), round(ratio.low, 4), round(ratio.high, 4)


def _summary(t: Timing) -> dict[str, Any]:
    return {"round_medians": [round(x, 4) for x in t.round_medians], "samples": len(t.samples_ms)}


def measure(gens: dict[str, Any], prompt_ids: list[int], target, objective: str, rounds: int, seconds: float,
            progress=None) -> Measured:
    lengths = [min(n, len(prompt_ids)) for n in target.prompt_tokens]
    first = lengths[0]
    streams = target.streams
    out = {n: LlmTiming(streams=streams) for n in gens}
    details: dict[str, Any] = {"prompt_tokens": lengths, "decode_tokens": DECODE_TOKENS, "streams": streams,
                               "decode_prompt_tokens": SHORT_PROMPT,
                               "stream_tokens": STREAM_TOKENS, "rounds": rounds, "scenarios": {}}

    short = prompt_ids[:SHORT_PROMPT]
    dec = _scenario({n: (lambda g=g: g.decode_ms(short, DECODE_TOKENS)) for n, g in gens.items()},
                    rounds, seconds * SHARES["decode"], progress, "decode")
    base_tps = 1000.0 / dec["baseline"].timings[1].p50
    for n, r in dec.items():
        t = r.timings[1]
        tps = 1000.0 / t.p50
        o = out[n]
        o.decode_tps, o.decode_samples = round(tps, 3), len(t.samples_ms)
        v, lo, hi = _interval(r)
        if v is not None:  # the candidate's speed as the baseline's times its paired ratio and interval
            o.decode_tps_low, o.decode_tps_high = round(base_tps * lo, 3), round(base_tps * hi, 3)
    details["scenarios"]["decode_ms_per_token"] = {n: _summary(r.timings[1]) for n, r in dec.items()}

    ttft: dict[int, dict] = {}
    for length in dict.fromkeys(lengths):
        res = _scenario({n: (lambda g=g, k=length: g.first_token_ms(prompt_ids[:k])) for n, g in gens.items()},
                        rounds, seconds * SHARES["first-token"] / len(set(lengths)), progress, f"first token {length}")
        ttft[length] = res
        for n, r in res.items():
            out[n].first_token_ms[str(length)] = round(r.timings[1].p50, 3)
        details["scenarios"][f"first_token_ms_{length}"] = {n: _summary(r.timings[1]) for n, r in res.items()}

    st = _scenario({n: (lambda g=g: g.streams_ms(short, STREAM_TOKENS, streams))
                    for n, g in gens.items()}, rounds, seconds * SHARES["streams"], progress, f"{streams} streams")
    for n, r in st.items():
        out[n].stream_tps = round(1000.0 / r.timings[1].p50, 3)
    details["scenarios"]["streams_ms_per_token"] = {n: _summary(r.timings[1]) for n, r in st.items()}

    chosen = {"first-token": ttft[first], "throughput": st}.get(objective, dec)
    for n, r in chosen.items():
        out[n].speedup, out[n].speedup_low, out[n].speedup_high = _interval(r)
    longest = max(lengths)
    for n, g in gens.items():
        out[n].peak_memory_mb = _peak(g, prompt_ids[:longest])
    what = {"first-token": f"time to first token at a {first}-token prompt",
            "throughput": f"aggregate tokens/s of {streams} concurrent streams ({STREAM_TOKENS} tokens each)"}.get(
        objective, f"decode tokens/s at batch 1 ({DECODE_TOKENS} tokens after a {SHORT_PROMPT}-token prompt)")
    basis = (f"{what}: geometric mean over {rounds} interleaved rounds of the per-round ratio against the FP32 "
             "baseline, with its 95% interval (onnxruntime-genai, greedy)")
    return Measured(out, basis, details)


def _peak(gen, prompt: list[int]) -> float | None:
    from .generate import Generator  # noqa: PLC0415

    def work():
        g = Generator(gen.folder, gen.threads)
        g.first_token_ms(prompt)
        g.decode_ms(prompt[:32], 8)

    try:
        return peak_added_mb(work)
    except Exception as e:  # informative only: never sinks a candidate
        log.warning("peak memory of %s not measured: %s", gen.folder, e)
        return None
