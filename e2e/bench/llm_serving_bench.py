"""Causal-LM serving benchmark on the REAL Triton (pytriton wheel, Python backend, decoupled `genai` flavour):
what the router and the token canary cost a streaming client. Writes markdown.

  PYTHONPATH=operator .venv/bin/python e2e/bench/llm_serving_bench.py [--checkpoint HF_DIR]
      [--stable fp32] [--canary int4[,int8]] [--streams 6] [--rounds 5] [--max-tokens 48]
      [--out e2e/bench/llm_serving_results.md] [--append]

Without --checkpoint the tiny test Llama (tests/serving/llm_models.py) is built in the run; with it, the
checkpoint is built by the onnxruntime-genai model builder at each precision (e.g. SmolLM2-135M).
Version 1 is stable, versions 2, 3... the canaries in the order given; every client is answered by stable.

1. Streams side by side in interleaved rounds through one Triton: direct to `<model>` v1, through
   `<model>_router` (mirroring off), and through two more routers loaded beside it that judge 10% and 100% of
   the requests on their tokens (after each client's stream, both versions score stable's continuation with one
   prefill each). Per path: median time to the first token and median decode tokens/s of the streams (tokens
   after the first / time from the first to the last), and the median over rounds of each round's ratio to the
   direct path. Clients stream one after another, so a judged request's scoring runs while the next client
   streams: the cost mirroring has on a busy CPU.
   The judging routers judge the first canary.
2. Each canary's figures through a 100% judging router against the same scoring done offline with
   onnxruntime-genai: next-token agreement and perplexity ratio of the canary on stable's continuations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT / "operator", ROOT):
    sys.path.insert(0, str(p))

from e2e.bench.machine import cpu_name  # noqa: E402
from e2e.triton.generate import generate_stream  # noqa: E402
from e2e.triton.server import TritonServer  # noqa: E402
from lathe.api.spec import Publish  # noqa: E402
from lathe.rollout.metrics import observe  # noqa: E402
from lathe.rollout.router import Compare, TritonRouter, router_config, router_name  # noqa: E402
from lathe.serving import TritonControl, publish  # noqa: E402

PROMPTS = ["Return the number of items in", "Create a new dictionary with keys from", "The path of the file",
           "What is the capital of France?", "Write a function that splits a string", "If the argument is a"]


def build(work: Path, checkpoint: str | None, precisions: list[str]) -> tuple[dict[str, Path], str]:
    """Model folders per precision (built by the onnxruntime-genai model builder) and what they are."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if checkpoint is None:
        subprocess.run([sys.executable, "-m", "tests.serving.llm_models", str(work / "tiny")], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        info = json.loads((work / "tiny" / "build.json").read_text())
        return ({p: work / "tiny" / p for p in precisions},
                f"the tiny test Llama (2 layers, hidden 64, vocab {info['vocab']}; tests/serving/llm_models.py)")
    out = {}
    for p in precisions:
        dst = work / p
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", checkpoint, "-o", str(dst),
                        "-p", p, "-e", "cpu", "-c", str(work / "cache"), "--extra_options", "hf_token=false"],
                       env=env, check=True, capture_output=True)
        out[p] = dst
    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    return out, f"{Path(checkpoint).name} ({cfg.get('model_type')}, {cfg.get('num_hidden_layers')} layers, " \
                f"hidden {cfg.get('hidden_size')}), built by the onnxruntime-genai model builder"


def score_offline(folder: Path, prompt: str, cont: list[int]):
    """The same prefill as the served model's scoring (same thread count: reductions in the same order)."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": 1, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    ids = list(og.Tokenizer(model).encode(prompt))
    seq = np.asarray(ids + cont, dtype=np.int32)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(seq) + 1)
    gen = og.Generator(model, params)
    gen.append_tokens(seq)
    rows = np.asarray(gen.get_output("logits"), dtype=np.float64)[0][len(ids) - 1:-1]
    logz = np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1)) + rows.max(1)
    return rows[np.arange(len(cont)), cont] - logz, rows.argmax(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None, help="a Hugging Face checkpoint folder (default: the tiny Llama)")
    ap.add_argument("--stable", default="fp32")
    ap.add_argument("--canary", default="int4", help="one or more precisions, comma-separated")
    ap.add_argument("--streams", type=int, default=6, help="streams per path per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--out", default=str(ROOT / "e2e/bench/llm_serving_results.md"))
    ap.add_argument("--append", action="store_true", help="add this run's report to --out instead of replacing it")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="lathe-llm-bench-"))
    t0 = time.time()
    canaries = a.canary.split(",")
    folders, about = build(work, a.checkpoint, [a.stable, *canaries])
    build_s = time.time() - t0
    name, repo = "lm", work / "repo"
    sp = Publish(repository=str(repo), model_name=name)
    publish(repo, name, folders[a.stable], "onnxruntime-genai", sp, a.stable)
    for c in canaries:
        publish(repo, name, folders[c], "onnxruntime-genai", sp, c)
    versions = {c: 2 + i for i, c in enumerate(canaries)}
    body = {"max_tokens": a.max_tokens, "stream": True}
    try:
        with TritonServer(repo) as srv:
            tc = TritonControl(srv.http_url, repo, metrics_url=srv.metrics_url)
            tc.serve(name, [1, *versions.values()])
            cmp = Compare(kind="tokens", timeout_ms=60000)
            router = TritonRouter(tc, name, compare=cmp)
            router.set_weights({1: 100})  # mirroring off, under the usual name
            cfg = tc.files.read_text(f"{name}/config.pbtxt")
            code = (ROOT / "operator/lathe/rollout/llm_router_model.py").read_bytes()

            def judging(percent: int, canary: int = 2) -> str:
                rname = f"{router_name(name)}_m{percent}_v{canary}"
                text = router_config(name, cfg, {1: 100, canary: 0}, 1, percent, (1, canary), cmp).replace(
                    f'name: "{router_name(name)}"', f'name: "{rname}"')
                tc.files.create_model(rname, {"1/model.py": code, "config.pbtxt": text.encode()})
                tc.load(rname)
                return rname

            paths = {"direct (v1)": (name, "1"), "router, mirroring off": (router_name(name), ""),
                     "router, 10% judged": (judging(10), ""), "router, 100% judged": (judging(100), "")}
            for model, version in paths.values():  # warm-up: every path, every prompt once
                for p in PROMPTS:
                    generate_stream(srv.http_url, model, {"text_input": p, **body}, version=version)
            first = {k: [] for k in paths}   # per round: median time to first token (ms)
            rate = {k: [] for k in paths}    # per round: median decode tokens/s
            tokens = {k: 0 for k in paths}
            for _ in range(a.rounds):
                for k, (model, version) in paths.items():
                    f, r = [], []
                    for i in range(a.streams):
                        s = generate_stream(srv.http_url, model, {"text_input": PROMPTS[i % len(PROMPTS)], **body},
                                            version=version)
                        f.append(s.first_s * 1e3)
                        if len(s.ids) > 1:
                            r.append((len(s.ids) - 1) / (s.total_s - s.first_s))
                        tokens[k] += len(s.ids)
                    first[k].append(float(np.median(f)))
                    rate[k].append(float(np.median(r)))

            # 2. each canary's figures through a 100% judging router against the offline scoring, once the
            #    judgments of the timed streams have all landed (each one runs after its client's stream)
            judged = {}
            for c, v in versions.items():
                judge = paths["router, 100% judged"][0] if v == 2 else judging(100, v)
                before, quiet_since = None, time.monotonic()
                while time.monotonic() - quiet_since < 3.0:
                    now = observe(tc.metrics_text(), name).mirror.get((1, v))
                    if now != before:
                        before, quiet_since = now, time.monotonic()
                    time.sleep(0.2)
                conts = {p: generate_stream(srv.http_url, judge, {"text_input": p, **body}).ids for p in PROMPTS}
                deadline = time.monotonic() + 300
                while True:
                    after = observe(tc.metrics_text(), name).mirror.get((1, v))
                    done = after.requests + after.errors + after.timeouts - (
                        (before.requests + before.errors + before.timeouts) if before else 0)
                    if done >= len(PROMPTS) or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                judged[c] = (conts, {k: getattr(after, k) - (getattr(before, k) if before else 0.0)
                                     for k in ("samples", "agree", "nll_stable", "nll_canary", "errors", "timeouts")})
        load = os.getloadavg()[0]
        offline = {}
        for c, (conts, _) in judged.items():
            n = agree = nll_s = nll_c = 0.0
            for p, cont in conts.items():
                if cont:
                    lp_s, top_s = score_offline(folders[a.stable], p, cont)
                    lp_c, top_c = score_offline(folders[c], p, cont)
                    n, agree = n + len(cont), agree + float((top_s == top_c).sum())
                    nll_s, nll_c = nll_s - float(lp_s.sum()), nll_c - float(lp_c.sum())
            offline[c] = (n, agree, nll_s, nll_c)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = "direct (v1)"
    ratio_first = {k: float(np.median([x / y for x, y in zip(first[k], first[base], strict=True)])) for k in paths}
    ratio_rate = {k: float(np.median([x / y for x, y in zip(rate[k], rate[base], strict=True)])) for k in paths}
    lines = [
        "# Causal-LM serving benchmark (real Triton 2.51 from nvidia-pytriton, CPU, decoupled Python backend + "
        "onnxruntime-genai 0.18)",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `e2e/bench/llm_serving_bench.py"
        + (f" --checkpoint {Path(a.checkpoint).name}" if a.checkpoint else "") + f"` on {platform.machine()} "
        f"({os.cpu_count()} cores, {cpu_name()}; load average {load:.1f} at the end: the machine was shared and "
        f"loaded, so only the side-by-side ratios mean anything). Model: {about}; stable v1 = {a.stable}, canaries "
        f"{', '.join(f'v{v} = {c}' for c, v in versions.items())} (models built in {build_s:.0f} s). Every client is answered by stable; streams of "
        f"{a.max_tokens} tokens at most, greedy, one client at a time; {a.rounds} interleaved rounds x {a.streams} "
        f"streams per path ({sum(tokens.values())} tokens streamed in all). Generation runs with 1 ONNX Runtime "
        "thread per request (the flavour's default).",
        "",
        "## Streams: router and token canary against direct",
        "",
        "| path | first token ms (median of rounds) | decode tokens/s (median of rounds) | first token / direct | "
        "tokens/s / direct |",
        "|---|---|---|---|---|",
    ]
    for k in paths:
        lines.append(f"| {k} | {np.median(first[k]):.1f} | {np.median(rate[k]):.1f} | {ratio_first[k]:.3f} | "
                     f"{ratio_rate[k]:.3f} |")
    lines += [
        "",
        "Ratios are the median over rounds of each round's figure divided by the direct path's in the same round.",
        "",
        "## The token canary's figures: router against offline, same prompts",
        "",
        f"{len(PROMPTS)} prompts through a 100% judging router per canary; stable's greedy continuations scored "
        "teacher-forced by both versions inside Triton, and again offline with onnxruntime-genai in this process "
        "(same thread count).",
        "",
        "| canary | scored tokens (router / offline) | next-token agreement: router | offline | perplexity ratio: "
        "router | offline | scoring failures / timeouts |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, (_, d) in judged.items():
        n, agree, nll_s, nll_c = offline[c]
        ra = d["agree"] / d["samples"] if d["samples"] else float("nan")
        rr = math.exp((d["nll_canary"] - d["nll_stable"]) / d["samples"]) if d["samples"] else float("nan")
        lines.append(f"| {c} vs {a.stable} | {d['samples']:.0f} / {n:.0f} | {ra:.5f} | {agree / n:.5f} | {rr:.5f} | "
                     f"{math.exp((nll_c - nll_s) / n):.5f} | {d['errors']:.0f} / {d['timeouts']:.0f} |")
    lines.append("")
    if a.append and Path(a.out).exists():
        lines = ["#" + ln if ln.startswith("#") else ln for ln in lines]  # a section under the first run's title
        Path(a.out).write_text(Path(a.out).read_text().rstrip("\n") + "\n\n" + "\n".join(lines))
    else:
        Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
