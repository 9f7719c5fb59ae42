"""Triton's Prometheus metrics → per-version counters for the rollout analysis."""

from __future__ import annotations

import re

from .machine import Counters, MirrorCounters, Observation, StreamCounters

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+([-+0-9.eEinfNa]+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

# The router's answer comparison (router_model.py; llm_router_model.py adds lathe_mirror_nll_total{side}),
# per (stable, canary) pair.
_MIRROR = {"lathe_mirror_requests_total": "requests", "lathe_mirror_samples_total": "samples",
           "lathe_mirror_agreement_total": "agree", "lathe_mirror_calls_total": "calls"}
# Causal LMs: what clients saw of each version's streams, counted by llm_router_model.py.
_STREAM = {"lathe_stream_requests_total": "requests", "lathe_stream_failures_total": "failures",
           "lathe_stream_tokens_total": "tokens", "lathe_stream_first_token_seconds_total": "first_s",
           "lathe_stream_decode_seconds_total": "decode_s"}
_FIELDS = {"nv_inference_request_success": "success", "nv_inference_request_failure": "failure",
           "nv_inference_request_duration_us": "request_us",
           "nv_inference_compute_infer_duration_us": "compute_us"}


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def observe(text: str, model: str) -> Observation:
    """Counters per version of `model` (failures summed over Triton's `reason` label)."""
    acc: dict[int, dict[str, float]] = {}
    p99: dict[int, float] = {}
    mirror: dict[tuple[int, int], dict[str, float]] = {}
    router: dict[str, float] = {}
    streams: dict[int, dict[str, float]] = {}
    for name, labels, value in parse(text):
        if labels.get("model") == f"{model}_router" and name in ("nv_inference_request_success",
                                                                  "nv_inference_request_failure"):
            key = _FIELDS[name]
            router[key] = router.get(key, 0.0) + value
            continue
        if labels.get("model") != model:
            continue
        if name in _MIRROR or name in ("lathe_mirror_failures_total", "lathe_mirror_nll_total"):
            if labels.get("stable", "").isdigit() and labels.get("canary", "").isdigit():
                d = mirror.setdefault((int(labels["stable"]), int(labels["canary"])), {})
                if name == "lathe_mirror_nll_total":
                    key = "nll_canary" if labels.get("side") == "canary" else "nll_stable"
                else:
                    key = _MIRROR.get(name) or ("timeouts" if labels.get("reason") == "timeout" else "errors")
                d[key] = d.get(key, 0.0) + value
            continue
        if not labels.get("version", "").isdigit():
            continue
        v = int(labels["version"])
        if name in _STREAM:
            d = streams.setdefault(v, {})
            d[_STREAM[name]] = d.get(_STREAM[name], 0.0) + value
            continue
        if name in _FIELDS:
            d = acc.setdefault(v, {})
            d[_FIELDS[name]] = d.get(_FIELDS[name], 0.0) + value
        elif name == "nv_inference_request_summary_us" and labels.get("quantile") == "0.99" and value == value:
            p99[v] = value / 1000.0
    return Observation({v: Counters(**d, p99_ms=p99.get(v)) for v, d in acc.items()},
                       mirror={pair: MirrorCounters(**d) for pair, d in mirror.items()},
                       router=Counters(**router) if router else None,
                       streams={v: StreamCounters(**d) for v, d in streams.items()})
