"""Operator load benchmark: apply N ModelOptimization resources at once against the real control
plane, and measure apply -> worker-Job-created latency (p50/p99), the operator's RSS and its
reconcile errors. The operator runs as its own process (`lathe operator`), as in a cluster.

    .venv/bin/python -m e2e.bench.operator_bench [--count 200] [--out e2e/bench/operator_results.md]

Goals (issue 6): p99 under 1 s, RSS under 150 MiB, zero reconcile errors."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, watch

from e2e.controlplane.fixture import ControlPlane, free_port

ROOT = Path(__file__).resolve().parents[2]


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "e2e/bench/operator_results.md"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lathe-opbench-"))
    cp = ControlPlane(work / "cp").start()
    api_client = cp.api_client()
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    ns = "bench"
    core.create_namespace({"metadata": {"name": ns}})
    port = free_port()
    env = dict(os.environ, KUBECONFIG=str(cp.kubeconfig), LATHE_METRICS_PORT=str(port))
    op_log = open(work / "operator.log", "w")
    op = subprocess.Popen([str(ROOT / ".venv/bin/lathe"), "operator", "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
                          env=env, stdout=op_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(2)  # let kopf finish its initial listing
        idle_rss = rss_mib(op.pid)

        created: dict[str, float] = {}
        seen: dict[str, float] = {}
        stop = threading.Event()

        def watch_jobs():
            w = watch.Watch()
            for ev in w.stream(client.BatchV1Api(api_client).list_namespaced_job, ns, timeout_seconds=600):
                name = (ev["object"].metadata.labels or {}).get("lathe.dev/name")
                if ev["type"] == "ADDED" and name and name not in seen:
                    seen[name] = time.monotonic()
                if stop.is_set() or len(seen) >= args.count:
                    w.stop()

        watcher = threading.Thread(target=watch_jobs, daemon=True)
        watcher.start()
        time.sleep(0.5)

        def apply(i: int) -> None:
            name = f"m{i:04d}"
            body = {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": name},
                    "spec": {"model": {"uri": "/models/model.onnx"}, "data": {"validation": {"uri": "/data/val.npz"}},
                             "budget": {"maxAccuracyDrop": 0.01}}}
            t = time.monotonic()
            custom.create_namespaced_custom_object("lathe.dev", "v1alpha1", ns, "modeloptimizations", body)
            created[name] = t

        pids = {"operator": op.pid, "bench client": os.getpid(),
                **{n: p.pid for n, p in cp.procs.items()}}
        cpu0 = {n: cpu_s(pid) for n, pid in pids.items()}
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(apply, range(args.count)))
        apply_s = time.monotonic() - t0
        peak = idle_rss
        while len(seen) < args.count and time.monotonic() - t0 < 300:
            peak = max(peak, rss_mib(op.pid))
            time.sleep(0.1)
        burst_s = time.monotonic() - t0
        cpu = {n: cpu_s(pid) - cpu0[n] for n, pid in pids.items()}
        stop.set()
        time.sleep(3)
        peak = max(peak, rss_mib(op.pid))
        lat = [(seen[n] - created[n]) * 1000 for n in created if n in seen]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        errors = metric(text, "lathe_reconcile_errors_total")
        # The floor on this machine: the same number of Job creates straight from the client, no
        # operator at all (what the API server and etcd can take on these cores).
        core.create_namespace({"metadata": {"name": "floor"}})
        batch = client.BatchV1Api(api_client)

        def create_job(i: int) -> None:
            resp = batch.create_namespaced_job("floor", {
                "metadata": {"name": f"j{i:04d}"},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                                               "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}}},
                _preload_content=False)
            resp.data  # noqa: B018 - read the body, as a client waiting for the answer does
        t1 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create_job, range(args.count)))
        floor_s = time.monotonic() - t1
        rows = [
            ("resources applied", f"{args.count} (16 client threads, {apply_s:.1f} s to apply all)"),
            ("worker Jobs created", f"{len(lat)}"),
            ("apply -> Job created p50", f"{statistics.median(lat):.0f} ms" if lat else "n/a"),
            ("apply -> Job created p99", f"{pct(lat, 99):.0f} ms" if lat else "n/a"),
            ("apply -> Job created max", f"{max(lat):.0f} ms" if lat else "n/a"),
            ("operator RSS idle / peak", f"{idle_rss:.0f} MiB / {peak:.0f} MiB"),
            ("reconcile errors", f"{errors:.0f}"),
            ("reconcile passes", f"{metric(text, 'lathe_reconciles_total'):.0f}"),
            ("wall time, first apply -> last Job seen", f"{burst_s:.1f} s"),
            ("CPU seconds in that time", ", ".join(f"{n} {v:.1f}" for n, v in cpu.items())),
            (f"floor: {args.count} Job creates straight from the client (no operator)", f"{floor_s:.1f} s"),
        ]
        md = ["# Operator load benchmark", "",
              f"`python -m e2e.bench.operator_bench --count {args.count}` on {os.cpu_count()} cores "
              f"(control plane, operator and client on the same machine).", "",
              "| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        md += ["", "Goals: p99 < 1000 ms, RSS < 150 MiB, 0 errors."]
        Path(args.out).write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return 0 if len(lat) == args.count else 1
    finally:
        op.terminate()
        try:
            op.wait(20)
        except subprocess.TimeoutExpired:
            op.kill()
        cp.stop()
        print(f"logs: {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
