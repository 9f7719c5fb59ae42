"""`lathe` command line: run the whole chain locally, the Job's worker, the operator, generators."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cmd_crd(args: argparse.Namespace) -> int:
    from lathe.api.crd import crd_yaml

    text = crd_yaml()
    return _write_or_check(text, Path(args.output) if args.output else None, args.check, "lathe crd")


def _cmd_reference(args: argparse.Namespace) -> int:
    from lathe.api.reference import reference_markdown

    text = reference_markdown()
    return _write_or_check(text, Path(args.output) if args.output else None, args.check, "lathe reference")


def _write_or_check(text: str, path: Path | None, check: bool, cmd: str) -> int:
    if path is None:
        if check:  # nothing to compare with: printing would look like a pass
            print(f"{cmd} --check needs the file to compare: {cmd} --check -o PATH", file=sys.stderr)
            return 2
        sys.stdout.write(text)
        return 0
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is out of date: run `{cmd} -o {path}`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from lathe.local_run import run_local

    return run_local(args.file, Path(args.out), quick=args.quick, example=args.example)


def _cmd_report(args: argparse.Namespace) -> int:
    from lathe.report_cmd import report_main

    return report_main(args.name, args.namespace, args.html, args.json)


def _cmd_worker(argv: list[str]) -> int:
    from lathe.worker.main import worker_main

    return worker_main(argv)


def _cmd_operator(args: argparse.Namespace) -> int:
    import kopf

    import lathe.controller.handlers  # noqa: F401 - registers the handlers

    logging.getLogger().handlers.clear()  # kopf.configure installs its own: one line per record, not two
    kopf.configure(verbose=args.verbose)
    # An explicit identity: kopf's default asks getpass.getuser(), which raises in a container whose
    # UID has no passwd entry (runAsUser 65532 in the chart; random UIDs on OpenShift).
    identity = f"lathe-operator@{socket.gethostname()}"
    settings = kopf.OperatorSettings()
    # Exact namespaces: kopf's cluster-wide scan of namespaces and CRDs would only meet 403s (the
    # chart grants namespaced Roles there) and delay the watches by its retries (~9 s).
    settings.scanning.disabled = bool(args.namespace)
    kopf.run(standalone=True, namespaces=args.namespace or [], clusterwide=not args.namespace,
             liveness_endpoint=args.liveness, identity=identity, settings=settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["worker"]:  # the worker parses its own flags
        return _cmd_worker(argv[1:])
    p = argparse.ArgumentParser(prog="lathe", description=__doc__)
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="optimize, validate and select locally, no cluster needed")
    r.add_argument("file", nargs="?", help="a ModelOptimization YAML (default: the embedded example)")
    r.add_argument("--example", metavar="NAME",
                   help="the embedded example to run without a file: digits (default; a 32x32 CNN trained in "
                        "seconds), minilm (all-MiniLM-L6-v2 sentence embeddings, the transformer path) or llm "
                        "(SmolLM2-135M, a causal LM judged by perplexity and next-token agreement)")
    r.add_argument("--out", default="lathe-out", help="working folder for models, data and the report")
    r.add_argument("--quick", action="store_true", help="fewer benchmark rounds (for smoke runs); with --example llm also fewer "
                        "windows and only the int8 and int4 candidates")
    r.set_defaults(fn=_cmd_run)
    rp = sub.add_parser("report", help="print a ModelOptimization's result (through the API server), or write "
                                       "its HTML report")
    rp.add_argument("name")
    rp.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    rp.add_argument("--html", metavar="FILE", help="write the HTML report there")
    rp.add_argument("--json", metavar="FILE", help="write the full result.json there")
    rp.set_defaults(fn=_cmd_report)
    sub.add_parser("worker", help="the Job entrypoint (see `lathe worker --help`)")
    c = sub.add_parser("crd", help="print or write the CustomResourceDefinition")
    c.add_argument("-o", "--output")
    c.add_argument("--check", action="store_true", help="exit 1 when the file differs from the types")
    c.set_defaults(fn=_cmd_crd)
    d = sub.add_parser("reference", help="print or write docs/reference.md")
    d.add_argument("-o", "--output")
    d.add_argument("--check", action="store_true")
    d.set_defaults(fn=_cmd_reference)
    o = sub.add_parser("operator", help="run the operator (kopf)")
    o.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable)")
    o.add_argument("--liveness", default="http://0.0.0.0:8080/healthz")
    o.add_argument("-v", "--verbose", action="store_true")
    o.set_defaults(fn=_cmd_operator)
    args = p.parse_args(argv)
    if args.cmd is None:
        p.print_help()
        return 2
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
