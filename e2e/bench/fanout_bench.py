"""What splitting a search over build Jobs costs and gains on this machine (issue 23): the default digits
search run with spec.search.parallelism 1 and 2, in alternating order, through the real operator, API
server, kube-scheduler and node agents (one target Node, N build Nodes: local processes on this machine),
with the real worker from this checkout.

    .venv/bin/python -m e2e.bench.fanout_bench [--rounds 2] [--parallelism 1 2] [--builders 2]
        [--bench-seconds 10] [--out e2e/bench/fanout_results.md]

Per run: the wall time from create to Succeeded, and per Job, from the API and the worker's own log: Job
created -> the worker's first log line (pod start, process start, imports), prepare (intake, data checks,
baseline: repeated by every Job of a split search), each candidate's build, the hand-over written (build Jobs)
and read back (the benchmark Job), the benchmark stage, and the report. The model in docs/scaling.md is
built from these parts. All Nodes share this machine's cores: the parallel builds compete for them, so the
wall time of parallelism 2 here is not what two real nodes give."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client

from e2e.bench.machine import cpu_name
from e2e.controlplane.fixture import (
    ControlPlane,
    _spawn_kwargs,
    default_bin_dir,
    free_port,
    kill_process_group,
    write_kubeconfig,
)
from e2e.nodeagent.agent import AgentProcess

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
NS = "bench"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def log_events(path: Path) -> list[tuple[float, str]]:
    """(unix time, message) of every line of a worker log that has a timestamp (the worker logs in UTC here)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_TIME.match(line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp() + int(m.group(2)) / 1000
            out.append((t, line[m.end():]))
    return out


def first(events, pattern: str) -> float | None:
    return next((t for t, msg in events if re.search(pattern, msg)), None)


def last(events, pattern: str) -> float | None:
    return next((t for t, msg in reversed(events) if re.search(pattern, msg)), None)


def job_parts(job, pod, log: Path) -> dict:
    """The phases of one worker Job, in seconds."""
    ev = log_events(log)
    created = job.metadata.creation_timestamp.timestamp()
    t_first = ev[0][0] if ev else None
    t_intake = first(ev, r"lathe\.worker:? \[intake\]\s+0%")
    t_prepared = first(ev, r"lathe\.worker:? \[candidates\]\s+0%")
    t_built = last(ev, r"lathe\.worker:? \[candidates\] 100%")
    builds = {}
    prev = t_prepared
    for t, msg in ev:
        m = re.search(r"lathe\.worker(?:\.llm)?:? candidate (\S+) built: (\w+)", msg)
        if m and prev is not None:
            builds[m.group(1)] = round(t - prev, 2)
            prev = t
    t_read0, t_read1 = first(ev, r"\[handover\]\s+0%"), first(ev, r"\[handover\] 100%")
    read = re.search(r"read (\d+) bytes in ([\d.]+)s", next((m for _, m in ev if "[handover] 100%" in m), ""))
    t_report0, t_end = first(ev, r"\[report\]\s+0%"), (ev[-1][0] if ev else None)
    term = ((pod.status.container_statuses or [None])[0].state.terminated if pod and pod.status.container_statuses
            else None)
    summary = {}
    if term is not None and term.message:
        try:
            summary = json.loads(term.message)
        except ValueError:
            summary = {}
    bench_start = t_read1 or t_built

    def span(a, b):
        return round(b - a, 2) if a is not None and b is not None else None
    return {
        "job": job.metadata.name, "node": pod.spec.node_name if pod else None,
        "start": span(created, t_first),  # Job created -> first log line: pod placed and started, imports
        "prepare": span(t_intake, t_prepared), "builds": builds, "build_total": span(t_prepared, t_built),
        "handover_write": summary.get("handoverSeconds"), "handover_bytes": summary.get("handoverBytes"),
        "handover_read": float(read.group(2)) if read else None, "read_bytes": int(read.group(1)) if read else None,
        "handover_stage": span(t_read0, t_read1),
        "benchmark": span(bench_start, t_report0) if t_report0 else None, "report": span(t_report0, t_end),
        "worker": span(t_first, t_end), "total": span(created, t_end),
    }


def start_scheduler(cp: ControlPlane, work: Path) -> subprocess.Popen:
    crt, key = cp.pki.issue("bench-scheduler", "system:kube-scheduler")
    kc = write_kubeconfig(work / "scheduler.kubeconfig", cp.url, cp.pki.ca_crt, crt, key, "system:kube-scheduler")
    log = open(work / "kube-scheduler.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([str(default_bin_dir() / "kube-scheduler"), f"--kubeconfig={kc}",
                             f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                             "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false"],
                            stdout=log, stderr=subprocess.STDOUT, **_spawn_kwargs(work))


def llm_resource(name: str, work: Path, parallelism: int) -> dict:
    """The causal-LM example's default search (SmolLM2-135M from its GGUF: int8, int4-rtn, int4-offset) on 4
    windows of 256 tokens; every Job's pod starts with an empty cache, as on a cluster (dequantize, export)."""
    from lathe.worker.llm.example import example_spec

    spec = example_spec(work / "llm-text", validation_windows=4, calibration_windows=4)
    spec["target"].update({"nodeSelector": {"pool": "target"}, "promptTokens": [128]})
    spec["artifacts"] = str(work / "artifacts")
    spec["publish"] = {"repository": str(work / f"repo-{name}"), "modelName": "smollm2"}
    if parallelism > 1:
        spec["search"] = {"parallelism": parallelism, "builders": {"nodeSelector": {"pool": "build"}}}
    return {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": name},
            "spec": spec}


def resource(name: str, digits: dict, work: Path, parallelism: int) -> dict:
    spec = {"model": {"uri": str(digits["model"]), "format": digits["format"], "inputs": digits["inputs"]},
            "task": {"type": "classification"},
            "data": {"calibration": {"uri": str(digits["calibration"])},
                     "validation": {"uri": str(digits["validation"])}},
            "target": {"batchSizes": [1], "nodeSelector": {"pool": "target"}},
            "budget": {"maxAccuracyDrop": 0.02},
            "artifacts": str(work / "artifacts"),
            "publish": {"repository": str(work / f"repo-{name}"), "modelName": "digits"}}
    if parallelism > 1:
        spec["search"] = {"parallelism": parallelism, "builders": {"nodeSelector": {"pool": "build"}}}
    return {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": name},
            "spec": spec}


def run_one(api_client, agents, name: str, body: dict, timeout: float) -> dict:
    custom, batch, core = (client.CustomObjectsApi(api_client), client.BatchV1Api(api_client),
                           client.CoreV1Api(api_client))
    t0 = time.monotonic()
    custom.create_namespaced_custom_object("lathe.dev", "v1alpha1", NS, "modeloptimizations", body)
    st = {}
    while time.monotonic() - t0 < timeout:
        st = custom.get_namespaced_custom_object("lathe.dev", "v1alpha1", NS, "modeloptimizations",
                                                 name).get("status") or {}
        if st.get("phase") in ("Succeeded", "Rejected", "Failed"):
            break
        time.sleep(0.5)
    wall = time.monotonic() - t0
    jobs = batch.list_namespaced_job(NS, label_selector=f"lathe.dev/name={name}").items
    pods = {p.metadata.labels.get("job-name"): p for p in core.list_namespaced_pod(NS).items}
    parts = []
    for job in sorted(jobs, key=lambda j: j.metadata.creation_timestamp):
        pod = pods.get(job.metadata.name)
        agent = agents.get(pod.spec.node_name) if pod else None
        logs = sorted((Path(agent.root) / "pods").glob(f"{NS}_{pod.metadata.name}_*/worker.log")) if agent else []
        if logs:
            parts.append(job_parts(job, pod, logs[-1]))
    copy = Path(body["spec"]["artifacts"]) / NS / name / "generation-1" / "result.json"
    full = json.loads(copy.read_text()) if copy.is_file() else {"candidates": []}
    return {"name": name, "phase": st.get("phase"), "wall": round(wall, 1), "winner": st.get("winner"),
            "candidates": [(c["name"], c["verdict"], round(c.get("accuracy") or 0, 5), c.get("speedup"),
                            c.get("speedupLow")) for c in full["candidates"]],
            "jobs": parts, "message": st.get("message")}


def sharing_child(spec_file: str, names: list[str]) -> None:
    """In a fresh process: prepare, then build `names` in order; prints each build's seconds (JSON)."""
    from lathe.api.spec import parse_spec
    from lathe.worker.pipeline import Pipeline

    spec = parse_spec(json.loads(Path(spec_file).read_text()))
    t = time.monotonic()
    pipe = Pipeline(spec, Path(tempfile.mkdtemp(prefix="lathe-sharing-")))
    pipe.prepare(profile=False)
    out = {"prepare": round(time.monotonic() - t, 2)}
    by_name = {c.name: c for c in pipe.all_candidates}
    for n in names:
        t = time.monotonic()
        pipe.build_one(by_name[n])
        out[n] = round(time.monotonic() - t, 2)
    print(json.dumps(out), flush=True)


def sharing(digits: dict, work: Path, rounds: int) -> list[dict]:
    """What one process shares between candidates that a split loses: pruned-25-int8 built after pruned-25 in
    the same process, and alone in a fresh one (alternating, each in its own interpreter)."""
    spec_file = work / "sharing-spec.json"
    spec_file.write_text(json.dumps(resource("sharing", digits, work, 1)["spec"]))
    out = []
    for r in range(rounds):
        for names in (["pruned-25", "pruned-25-int8"], ["pruned-25-int8"]):
            proc = subprocess.run([str(BIN / "python"), "-m", "e2e.bench.fanout_bench", "--sharing-child",
                                   str(spec_file), *names], capture_output=True, text=True, cwd=ROOT, timeout=900)
            line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
            out.append({"round": r, "order": names, "seconds": json.loads(line) if line else proc.stderr[-500:]})
            print(json.dumps(out[-1]), flush=True)
    return out


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--sharing-child":
        sharing_child(sys.argv[2], sys.argv[3:])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--parallelism", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--builders", type=int, default=2, help="build Nodes (pool=build), beside one target Node")
    ap.add_argument("--bench-seconds", type=float, default=10.0)
    ap.add_argument("--search", choices=("digits", "llm"), default="digits",
                    help="the default digits search, or the causal-LM example's (results default to "
                         "e2e/bench/fanout_llm_results.md)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None, help="also write every run's figures here")
    ap.add_argument("--sharing-rounds", type=int, default=2,
                    help="rounds of the in-process sharing measure (pruned-25-int8 after pruned-25, and alone)")
    ap.add_argument("--load-note", default="", help="what else ran on the machine, for the report's header")
    ap.add_argument("--report-from", default=None, help="re-render the report from a --json file (no runs)")
    args = ap.parse_args()
    args.out = args.out or str(ROOT / "e2e/bench" / ("fanout_llm_results.md" if args.search == "llm"
                                                     else "fanout_results.md"))
    if args.search == "llm":
        args.sharing_rounds = 0  # the in-process sharing measure is the digits search's
    if args.report_from:
        doc = json.loads(Path(args.report_from).read_text())
        Path(args.out).write_text(report(doc["runs"], args, doc.get("sharing", [])))
        print(f"wrote {args.out}")
        return 0

    def stop(signum, frame):  # a SIGTERM runs the clean-up below too
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    work = Path(tempfile.mkdtemp(prefix="lathe-fanout-"))
    from lathe.worker.samples import make_digits

    digits = make_digits(work / "digits") if args.search == "digits" else None
    shared = sharing(digits, work, args.sharing_rounds) if args.sharing_rounds else []
    cp = ControlPlane(work / "cp").start()
    procs, agents = [], {}
    runs = []
    try:
        api_client = cp.api_client()
        client.CoreV1Api(api_client).create_namespace({"metadata": {"name": NS}})
        procs.append(start_scheduler(cp, work))
        nodes = {f"build-{i + 1}": "build" for i in range(args.builders)} | {"target-1": "target"}
        for node, pool in nodes.items():
            agents[node] = AgentProcess(cp.kubeconfig, work / node, node_name=node, manage_jobs="off",
                                        extra_args=["--no-bind", "--label", f"pool={pool}"]).start()
        port = free_port()
        env = dict(os.environ, KUBECONFIG=str(cp.kubeconfig), LATHE_METRICS_PORT=str(port),
                   LATHE_WORKER_COMMAND=f"{BIN / 'lathe'} worker", LATHE_BENCH_SECONDS=f"{args.bench_seconds:g}",
                   LATHE_MAX_ATTEMPTS="1", LATHE_PROGRESS_INTERVAL="5", LATHE_ROLLOUT_INTERVAL="1",
                   LATHE_CPU_RESOURCES=json.dumps({"requests": {"cpu": "100m", "memory": "256Mi"}}), TZ="UTC")
        op_log = open(work / "operator.log", "w")  # noqa: SIM115 - closed with the process
        op = subprocess.Popen([str(BIN / "lathe"), "operator", "--namespace", NS, "--liveness",
                               f"http://127.0.0.1:{free_port()}/healthz"], env=env, stdout=op_log,
                              stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(op)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        for r in range(args.rounds):
            order = args.parallelism if r % 2 == 0 else list(reversed(args.parallelism))
            for p in order:
                name = f"{args.search}-p{p}-r{r}"
                body = resource(name, digits, work, p) if digits else llm_resource(name, work, p)
                run = run_one(api_client, agents, name, body, timeout=3600)
                run.update(parallelism=p, round=r)
                runs.append(run)
                print(json.dumps(run), flush=True)
    finally:
        for p in reversed(procs):
            kill_process_group(p)
        for a in agents.values():
            a.stop()
        cp.stop()
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "sharing": shared}, indent=1))
    Path(args.out).write_text(report(runs, args, shared))
    print(f"wrote {args.out}; work in {work}")
    return 0


def med(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def report(runs: list[dict], args, shared: list[dict] = ()) -> str:
    lines = ["# Fan-out: a search split over build Jobs (issue 23)"
             + (": a causal-LM search" if getattr(args, "search", "digits") == "llm" else ""), "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores{args.load_note}: every figure is one run's, wall "
             "times drift.",
             f"Run: `python -m e2e.bench.fanout_bench --rounds {args.rounds} --parallelism "
             f"{' '.join(map(str, args.parallelism))} --builders {args.builders} --bench-seconds {args.bench_seconds:g}"
             f"{' --search llm' if args.search == 'llm' else ''}` on {datetime.now(UTC):%Y-%m-%d}: "
             + ("the causal-LM example's default search (SmolLM2-135M from its GGUF: int8, int4-rtn, int4-offset; 4 "
                "windows of 256 tokens; every Job starts with an empty model cache, as a pod does)"
                if args.search == "llm" else "the default digits search (torchscript CNN, runtimes onnxruntime and "
                "openvino, batch 1)") + ", through the real operator, API server, kube-scheduler and node agents (one target "
             f"Node, {args.builders} build Nodes, all local processes on this machine), rounds in alternating order.",
             "", "## Runs", "",
             "| run | parallelism | phase | wall s | winner | Jobs |", "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['name']} | {r['parallelism']} | {r['phase']} | {r['wall']} | {r['winner']} | "
                     f"{', '.join(j['job'] + ' on ' + str(j['node']) for j in r['jobs'])} |")
    lines += ["", "## Per Job (seconds)", "",
              "| Job | node | Job created -> first log line | prepare | builds | hand-over write (bytes) | "
              "hand-over read (bytes) | benchmark stage | report+publish | worker | Job total |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for j in r["jobs"]:
            builds = ", ".join(f"{k} {v}" for k, v in j["builds"].items())
            lines.append(
                f"| {j['job']} | {j['node']} | {j['start']} | {j['prepare']} | {j['build_total']} ({builds}) | "
                f"{j['handover_write']} ({j['handover_bytes']}) | {j['handover_read']} ({j['read_bytes']}) | "
                f"{j['benchmark']} | {j['report']} | {j['worker']} | {j['total']} |")
    by_p = {}
    for r in runs:
        by_p.setdefault(r["parallelism"], []).append(r)
    lines += ["", "## Medians", "", "| parallelism | wall s | Job start | prepare per Job | sum of builds | "
              "longest build Job's builds | hand-over write | hand-over read | benchmark stage |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p, rs in sorted(by_p.items()):
        jobs = [j for r in rs for j in r["jobs"]]
        build_jobs = [j for j in jobs if j["build_total"] is not None]
        longest = [max((j["build_total"] for j in r["jobs"] if j["build_total"] is not None), default=None) for r in rs]
        sums = [sum(j["build_total"] for j in r["jobs"] if j["build_total"] is not None) for r in rs]
        lines.append(f"| {p} | {med(r['wall'] for r in rs)} | {med(j['start'] for j in jobs)} | "
                     f"{med(j['prepare'] for j in jobs)} | {med(sums)} | {med(longest)} | "
                     f"{med(j['handover_write'] for j in build_jobs)} | {med(j['handover_read'] for j in jobs)} | "
                     f"{med(j['benchmark'] for j in jobs)} |")
    metric = "perplexity" if getattr(args, "search", "digits") == "llm" else "top-1"
    lines += ["", f"Candidates per run (name: verdict, {metric}, speedup [low end of its 95% interval]): the same "
              "search must give the same accuracies; verdicts may differ only where the speed gate's interval "
              "(minSpeedup unset: it must stay above 1.0) moves with the load:", ""]
    for r in runs:
        lines.append(f"- {r['name']}: " + ", ".join(
            f"{c[0]} {c[1]} {c[2]}" + (f" {c[3]:.2f}x [{c[4]:.2f}]" if len(c) > 4 and c[3] and c[4] else "")
            for c in r["candidates"]))
    if shared:
        lines += ["", "## What one process shares between candidates", "",
                  "pruned-25-int8 built right after pruned-25 in one process (as a single Job, or a build Job "
                  "holding both, does), and alone in a fresh process (as a build Job whose share starts with it "
                  "does); seconds, each in its own interpreter, alternating:", "",
                  "| round | builds, in order | prepare | pruned-25 | pruned-25-int8 |", "|---|---|---|---|---|"]
        for s in shared:
            sec = s["seconds"] if isinstance(s["seconds"], dict) else {}
            lines.append(f"| {s['round']} | {' then '.join(s['order'])} | {sec.get('prepare')} | "
                         f"{sec.get('pruned-25', '-')} | {sec.get('pruned-25-int8')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
