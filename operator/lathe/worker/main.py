"""The Job entrypoint: `lathe worker [--spec FILE] [--workdir DIR] [--termination-log PATH]`.

The spec comes from `--spec FILE` (JSON or YAML) or the env var LATHE_SPEC (JSON). On success the
compact summary (WorkerResult.compact(), < 4 KiB) goes to the termination log and the exit code is 0
(also when no candidate met the budget: that is a result). On failure the termination log gets
{"error", "stage", "kind": "InvalidInput"|"Crash"} and the exit code is 2 (bad input) or 1 (crash)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

log = logging.getLogger("lathe.worker")


def _write_termination(path: str, text: str) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    except OSError as e:
        log.warning("cannot write termination log %s: %s", path, e)


def _failure(path: str, kind: str, stage: str, message: str) -> None:
    doc = {"error": message[:3000], "stage": stage, "kind": kind}
    _write_termination(path, json.dumps(doc))


def _load_spec_text(args) -> tuple[str, str]:
    if args.spec:
        return Path(args.spec).read_text(), args.spec
    env = os.environ.get("LATHE_SPEC")
    if env:
        return env, "LATHE_SPEC"
    raise FileNotFoundError("no spec: pass --spec FILE or set LATHE_SPEC")


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="lathe worker", description="Run the optimization worker on one spec.")
    p.add_argument("--spec", help="spec file (JSON or YAML; the ModelOptimization spec, or a whole resource)")
    p.add_argument("--workdir", default=os.environ.get("LATHE_WORKDIR", "/work"), help="where artifacts and reports go")
    p.add_argument("--termination-log", default="/dev/termination-log")
    p.add_argument("--bench-seconds", type=float, default=None, help="time budget of the benchmark stage")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--build-only", action="store_true",
                      help="a build Job of a split search (spec.search.parallelism): build and validate one share "
                           "(--shard K/N) and hand it over through spec.artifacts; no benchmark, no publish")
    mode.add_argument("--benchmark", type=int, metavar="N", default=None,
                      help="the benchmark Job of a search split into N build Jobs: read their hand-overs, time "
                           "everything here, select, report and publish (env LATHE_FAILED_SHARDS: shards that "
                           "failed for good, {\"k\": reason})")
    p.add_argument("--shard", default=None, metavar="K/N", help="with --build-only: which share, 1-based")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def worker_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    term = args.termination_log
    from ..api.spec import parse_spec  # noqa: PLC0415
    from .errors import InvalidInput, WorkerError  # noqa: PLC0415

    try:
        text, source = _load_spec_text(args)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            import yaml  # noqa: PLC0415

            obj = yaml.safe_load(text)
        if isinstance(obj, dict) and "spec" in obj and "apiVersion" in obj:
            obj = obj["spec"]
        spec = parse_spec(obj)
    except (ValidationError, ValueError, FileNotFoundError, OSError) as e:
        msg = str(e) if not isinstance(e, ValidationError) else "; ".join(
            f"spec.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        log.error("invalid spec: %s", msg)
        _failure(term, "InvalidInput", "spec", msg)
        return 2
    try:
        from .pipeline import visible_gpu_architecture  # noqa: PLC0415
        from .publish_step import check_architecture, keep_architecture_engines, publish_winner  # noqa: PLC0415
        from .tasks import run  # noqa: PLC0415

        arch = os.environ.get("LATHE_GPU_ARCH")  # one of spec.target.gpu.architectures' build Jobs
        if arch:
            check_architecture(arch, visible_gpu_architecture())
        if args.build_only:
            from .shard_run import build_shard, compact_summary  # noqa: PLC0415

            shard, shards = _shard(args.shard)
            summary = build_shard(spec, Path(args.workdir), shard, shards)
            _write_termination(term, compact_summary(summary))
            log.info("build Job %d/%d handed over %s", shard, shards,
                     ", ".join(c["name"] for c in summary["candidates"]))
            return 0
        if args.benchmark is not None:
            from .shard_run import benchmark_shards  # noqa: PLC0415

            result = benchmark_shards(spec, Path(args.workdir), args.benchmark, _failed_shards(),
                                      bench_seconds=args.bench_seconds)
        else:
            result = run(spec, Path(args.workdir), bench_seconds=args.bench_seconds)
        if arch:
            keep_architecture_engines(spec, result, arch)  # the operator's publish Job publishes
        else:
            publish_winner(spec, result, Path(args.workdir))
        from .keep_report import emit, keep  # noqa: PLC0415

        keep(spec, result, Path(args.workdir))
    except InvalidInput as e:
        log.error("invalid input at %s: %s", e.stage, e.message)
        _failure(term, e.kind, e.stage, e.message)
        return 2
    except WorkerError as e:
        log.error("worker failed at %s: %s\n%s", e.stage, e.message, traceback.format_exc())
        _failure(term, "Crash", e.stage, e.message)
        return 1
    except Exception as e:
        log.error("worker crashed:\n%s", traceback.format_exc())
        _failure(term, "Crash", "worker", f"{type(e).__name__}: {e}")
        return 1
    _write_termination(term, result.compact())
    emit(result, Path(args.workdir), result_budget(spec, result))
    w = result.winner_result()
    if w is not None:
        log.info("winner %s: %s", w.name, w.reason)
    else:
        log.info("no candidate met the budget")
    return 0


def _shard(text: str | None) -> tuple[int, int]:
    from .errors import InvalidInput  # noqa: PLC0415

    k, _, n = (text or "").partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise InvalidInput("spec", f"--shard {text!r}: want K/N with 1 <= K <= N")
    return int(k), int(n)


def _failed_shards() -> dict[int, str]:
    from .errors import InvalidInput  # noqa: PLC0415

    try:
        doc = json.loads(os.environ.get("LATHE_FAILED_SHARDS") or "{}")
        return {int(k): str(v) for k, v in doc.items()}
    except (ValueError, AttributeError) as e:
        raise InvalidInput("spec", f"LATHE_FAILED_SHARDS: {e}") from e


def result_budget(spec, result) -> dict:
    from ..evaluate.budget import effective_budget  # noqa: PLC0415

    return effective_budget(spec.budget, result.metric, str(spec.objective))[0]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(worker_main())
