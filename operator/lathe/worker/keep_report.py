"""Keeping the report after the pod: copies of result.json, details.json and report.html under
spec.artifacts (a path, pvc://claim/path or an s3://, gs:// or az:// prefix, in <namespace>/<name>/generation-<n>/
for a Job), the
Triton version folder's own copy (written by the publisher), and the whole result in the worker's
last log lines for the operator to keep in a ConfigMap (lathe.api.result_log)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

from lathe.api import result_log
from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import WorkerResult
from lathe.storage.clients import is_object_uri
from lathe.storage.paths import PathRefused, safe_join
from lathe.storage.uri import parse_uri, pvc_path

from .errors import InvalidInput, WorkerError

log = logging.getLogger("lathe.worker.keep")
FILES = ("result.json", "details.json", "report.html")


def artifacts_dir(uri: str, sub: str = "") -> Path:
    """Where spec.artifacts (and `sub` inside it) is in this process: a path, file://path, or a mounted
    pvc://claim/path, resolved inside the claim or folder. InvalidInput when it would leave it."""
    try:
        scheme, authority, key = parse_uri(uri)
        if scheme == "pvc":
            base = pvc_path(authority, key.rstrip("/"))
        elif scheme == "file":
            base = Path(key).expanduser()
        else:
            raise WorkerError("report", f"spec.artifacts {uri!r}: only a path, pvc://claim/path, s3://, gs:// "
                                        "or az:// can be written")
        return safe_join(base, sub, f"spec.artifacts {uri}") if sub else base
    except PathRefused as e:
        raise InvalidInput("spec", f"spec.artifacts: {e}") from e
    except ValueError as e:
        raise WorkerError("report", f"spec.artifacts {uri!r}: {e}") from e


def subfolder() -> str:
    resource = os.environ.get("LATHE_RESOURCE")  # set by the operator's Job: namespace/name
    if not resource:
        return ""
    return f"{resource}/generation-{os.environ.get('LATHE_GENERATION', '0')}"


def keep(spec: ModelOptimizationSpec, result: WorkerResult, workdir: Path) -> list[str]:
    """Copy the reports where they outlive the pod; returns their locations as the user wrote them
    (also in result.copies). A location that cannot be written costs a warning, not the run."""
    copies: list[str] = []
    pub = result.published
    if pub and pub.path and is_object_uri(pub.path):  # the publisher uploaded what the folder had
        if result.report:
            copies.append(f"{pub.path}/report.json")
            if Path(result.report).with_name("report.html").exists():
                copies.append(f"{pub.path}/report.html")
    elif pub and pub.path:
        version_dir = Path(pub.path)
        # As the user wrote the repository (pvc://claim/...), not where this pod mounts it.
        shown = f"{pub.repository.rstrip('/')}/{pub.model_name}/{pub.version}"
        copies += [f"{shown}/{n}" for n in ("report.json", "report.html") if (version_dir / n).exists()]
    dest = None
    sub = subfolder()
    shown_artifacts = (spec.artifacts or "").rstrip("/") + (f"/{sub}" if sub else "")
    if spec.artifacts:
        try:
            dest = "object" if is_object_uri(spec.artifacts) else artifacts_dir(spec.artifacts, sub)
        except InvalidInput:
            raise  # a location that leaves its claim: checked before the run (worker.locations), never a warning
        except WorkerError as e:
            result.warnings.append(e.message)
        else:
            copies += [f"{shown_artifacts}/{n}" for n in FILES]
    result.copies = copies
    (workdir / "result.json").write_text(result.model_dump_json(by_alias=True, indent=2))
    if dest is not None:
        try:
            if dest == "object":
                _upload(shown_artifacts, workdir)
            else:
                dest.mkdir(parents=True, exist_ok=True)
                for n in FILES:
                    if (workdir / n).exists():
                        tmp = dest / f".{n}.part"
                        shutil.copyfile(workdir / n, tmp)
                        os.replace(tmp, dest / n)  # a reader never sees half a report
        except (OSError, ValueError) as e:  # StorageError is a ValueError
            msg = f"report not kept in spec.artifacts {spec.artifacts}: {e}"
            log.warning("%s", msg)
            result.warnings.append(msg)
            result.copies = [c for c in copies if not c.startswith(spec.artifacts.rstrip("/"))]
            (workdir / "result.json").write_text(result.model_dump_json(by_alias=True, indent=2))
    if result.copies:
        log.info("report kept at %s", ", ".join(result.copies))
    return result.copies


def _upload(prefix_uri: str, workdir: Path) -> None:
    """One PUT per file: an object store makes each object visible whole or not at all."""
    from lathe.storage.clients import client_for_uri  # noqa: PLC0415

    client, bucket, prefix = client_for_uri(prefix_uri)
    for n in FILES:
        if (workdir / n).exists():
            client.upload(bucket, f"{prefix.strip('/')}/{n}".lstrip("/"), workdir / n)


def emit(result: WorkerResult, workdir: Path, budget: dict | None, out=None) -> None:
    """The whole result as the last lines of stdout (see lathe.api.result_log)."""
    out = out or sys.stdout
    try:
        details = json.loads((workdir / "details.json").read_text())
    except (OSError, ValueError):
        details = {}
    doc = {"result": result.model_dump(by_alias=True, mode="json"), "details": details,
           "budget": dict(budget or {})}
    for line in result_log.encode(doc):
        print(line, file=out)
    out.flush()
