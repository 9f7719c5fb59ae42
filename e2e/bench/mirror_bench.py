"""Mirroring benchmark on the REAL Triton (issue 13): what comparing answers on live traffic costs the
client, and whether the router's agreement figure is the one an offline comparison gives.

  PYTHONPATH=operator .venv/bin/python e2e/bench/mirror_bench.py [--model digits|minilm]
      [--requests 300] [--rounds 5] [--compare 300] [--out e2e/bench/mirror_results.md]

1. Client latency side by side, in interleaved rounds: three routers loaded at once in the same Triton,
   each sending every client to stable (v1 FP32): mirroring off, 10% mirrored to the canary (v2 INT8),
   100% mirrored. p50/p99 over all rounds, and the median of per-round ratios to mirroring off.
   Goal (issue 13): with 10% mirrored, p50 and p99 within 10% of mirroring off.
2. Agreement: `--compare` distinct inputs through a 100% mirroring router; the router's figure (Triton
   custom metrics, deltas) against the same comparison done offline with ONNX Runtime on the same inputs
   (top-1 agreement for the digits classifier, mean cosine for MiniLM). Goal: within 0.005. Digits adds a
   canary that disagrees on a slice (the FP32 model with classes 0 and 1 swapped: v3), where agreeing
   with the offline figure is not a given.
"""

from __future__ import annotations

import argparse
import os
import platform
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
from e2e.bench.serving_bench import minilm_models, timed  # noqa: E402
from e2e.triton.server import TritonServer  # noqa: E402
from lathe.api.spec import Publish  # noqa: E402
from lathe.rollout.metrics import observe  # noqa: E402
from lathe.rollout.router import Compare, TritonRouter, router_config, router_name  # noqa: E402
from lathe.serving import TritonControl, publish  # noqa: E402
from tests.serving.models import build  # noqa: E402


def offline(stable: Path, canary: Path, rows: list[dict[str, np.ndarray]], kind: str, output: str) -> float:
    import onnxruntime as ort

    s = [ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]) for m in (stable, canary)]
    vals = []
    for feeds in rows:
        a, b = (np.asarray(x.run([output], feeds)[0], dtype=np.float64).reshape(1, -1) for x in s)
        if kind == "top1":
            vals.append(float(a.argmax() == b.argmax()))
        else:
            vals.append(float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
    return float(np.mean(vals))


def send(client, model: str, feeds: dict[str, np.ndarray]):
    import tritonclient.http as http
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, x in feeds.items():
        inp = http.InferInput(name, list(x.shape), np_to_triton_dtype(x.dtype))
        inp.set_data_from_numpy(x)
        inputs.append(inp)
    return client.infer(model, inputs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "e2e/bench/mirror_results.md"))
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compare", type=int, default=300)
    ap.add_argument("--model", choices=["digits", "minilm"], default="digits")
    a = ap.parse_args(argv)
    import tritonclient.http as http

    work = Path(tempfile.mkdtemp(prefix="lathe-mirror-"))
    if a.model == "minilm":
        models = minilm_models(work / "minilm")
        all_feeds = models["feeds"]
        kind, about = "cosine", "all-MiniLM-L6-v2 (sequence 128), INT8 = the worker's validated int8-dynamic candidate"
    else:
        models = build(work / "models", hidden=256)
        all_feeds = {"input": np.asarray(models["x"], dtype=np.float32)}
        kind, about = "top1", "digits MLP 64→256→10 trained in the run, INT8 = `quantize_dynamic`"
    name = a.model
    repo = work / "repo"
    sp = Publish(repository=str(repo), model_name=name, flavour="python", max_batch_size=8)
    publish(repo, name, [models["fp32"]], "onnxruntime", sp, "fp32")
    publish(repo, name, [models["int8"]], "onnxruntime", sp, "int8-dynamic")
    canaries = {2: ("INT8 (v2)", Path(models["int8"]))}
    if a.model == "digits":
        from tests.rollout.test_rollout_agreement import swapped

        publish(repo, name, [swapped(models["fp32"], work / "swapped.onnx")], "onnxruntime", sp, "swapped")
        canaries[3] = ("classes 0/1 swapped (v3)", work / "swapped.onnx")
    n_rows = len(next(iter(all_feeds.values())))
    row = [{k: v[i:i + 1].copy() for k, v in all_feeds.items()} for i in range(n_rows)]

    with TritonServer(repo) as srv:
        tc = TritonControl(srv.http_url, repo, metrics_url=srv.metrics_url)
        tc.serve(name, [1, *canaries])
        cfg = tc.files.read_text(f"{name}/config.pbtxt")
        import onnx

        output = onnx.load(str(models["fp32"]), load_external_data=False).graph.output[0].name
        cmp = Compare(kind=kind, output=output, timeout_ms=1000)
        router = TritonRouter(tc, name, compare=cmp)
        router.set_weights({1: 100})  # mirroring off, under the usual name
        routers = {"mirroring off": router_name(name)}
        code = (ROOT / "operator/lathe/rollout/router_model.py").read_bytes()

        def mirroring(rname: str, percent: int, canary: int) -> str:
            text = router_config(name, cfg, {1: 100, canary: 0}, 1, percent, (1, canary), cmp).replace(
                f'name: "{router_name(name)}"', f'name: "{rname}"')
            tc.files.create_model(rname, {"1/model.py": code, "config.pbtxt": text.encode()})
            tc.load(rname)
            return rname

        for m in (10, 100):
            routers[f"{m}% mirrored"] = mirroring(f"{router_name(name)}_m{m}", m, 2)
        judges = {v: routers["100% mirrored"] if v == 2 else mirroring(f"{router_name(name)}_v{v}", 100, v)
                  for v in canaries}
        router._agreement_counters()  # the counters model the mirrored routers report to
        c = http.InferenceServerClient(srv.http_url)

        # 1. latency, interleaved rounds (the same input each request, as serving_bench.py)
        res = {k: [] for k in routers}
        for _ in range(a.rounds):
            for k, m in routers.items():
                res[k].append(timed(c, m, row[0], "", a.requests))
        p50 = {k: [float(np.median(r)) for r in v] for k, v in res.items()}
        p99 = {k: [float(np.percentile(r, 99)) for r in v] for k, v in res.items()}
        allv = {k: np.concatenate(v) for k, v in res.items()}

        # 2. agreement: distinct inputs through a 100% router per canary, router figure vs offline
        picked = [row[i % n_rows] for i in range(a.compare)]
        agreement = {}
        for v, rname in judges.items():
            before = observe(tc.metrics_text(), name).mirror.get((1, v))
            for feeds in picked:
                send(c, rname, feeds)
            deadline = time.monotonic() + 60
            while True:  # the comparisons finish in the background after each client answer
                after = observe(tc.metrics_text(), name).mirror.get((1, v))
                done = after.requests - (before.requests if before else 0) if after else 0
                if done >= a.compare or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            d_samples = after.samples - (before.samples if before else 0)
            d_agree = after.agree - (before.agree if before else 0)
            failures = (after.errors + after.timeouts) - ((before.errors + before.timeouts) if before else 0)
            router_fig = d_agree / d_samples if d_samples else float("nan")
            agreement[v] = (int(done), router_fig, offline(Path(models["fp32"]), canaries[v][1], picked, kind, output),
                            int(failures))
        c.close()

    base = "mirroring off"
    ratio = {k: (float(np.median([x / y for x, y in zip(p50[k], p50[base], strict=True)])),
                 float(np.median([x / y for x, y in zip(p99[k], p99[base], strict=True)]))) for k in routers}
    lines = [
        "# Mirroring benchmark (real Triton 2.51 from nvidia-pytriton, CPU, python backend + ONNX Runtime)",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `e2e/bench/mirror_bench.py --model {a.model}` on "
        f"{platform.machine()} ({os.cpu_count()} cores, {cpu_name()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end). Model: {about}. Every client is answered by stable (v1 FP32); "
        f"mirrored copies go to the canary (v2 INT8). Batch 1, HTTP, sequential; {a.rounds} interleaved rounds × "
        f"{a.requests} requests per router.",
        "",
        "## Client latency",
        "",
        "| router | p50 ms | p99 ms | p50 / off (median of rounds) | p99 / off (median of rounds) |",
        "|---|---|---|---|---|",
    ]
    for k in routers:
        lines.append(f"| {k} | {np.median(allv[k]):.3f} | {np.percentile(allv[k], 99):.3f} | "
                     f"{ratio[k][0]:.3f} | {ratio[k][1]:.3f} |")
    r10 = ratio["10% mirrored"]
    lines += [
        "",
        f"- Goal, 10% mirrored within 10% of off: p50 ×{r10[0]:.3f}, p99 ×{r10[1]:.3f}: "
        f"**{'met' if r10[0] <= 1.10 and r10[1] <= 1.10 else 'not met'}**.",
        "",
        "## Agreement: router vs offline, same inputs",
        "",
        f"| canary | compared requests | router ({kind}) | offline ONNX Runtime ({kind}) | difference | mirror failures |",
        "|---|---|---|---|---|---|",
    ]
    for v, (done, fig, off, fails) in agreement.items():
        lines.append(f"| {canaries[v][0]} | {done} of {a.compare} | {fig:.5f} | {off:.5f} | {abs(fig - off):.5f} | "
                     f"{fails} |")
    worst = max(abs(fig - off) for _, fig, off, _ in agreement.values())
    lines += ["", f"- Goal, within 0.005: **{'met' if worst <= 0.005 else 'not met'}** (largest difference "
                  f"{worst:.5f}).", ""]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
