"""One TensorRT engine per GPU architecture (spec.target.gpu.architectures), published as one version.

The hand-over, in three steps (docs/operator.md):

1. each architecture's build Job (env LATHE_GPU_ARCH=<cc>) does not publish: for every candidate that
   passed there, the worker calls `keep_engine(...)`, which copies its engine and the ONNX graph it was
   built from to `<spec.artifacts>/<namespace>/<name>/generation-<n>/sm<CC>/<candidate>/`
   (`model.plan`, `source.onnx`);
2. the operator reads each Job's result (candidates, verdicts, speedups) and chooses the candidate that
   passed on every architecture (controller.plan.choose_across);
3. the operator's publish Job runs `python -m lathe.serving.architectures` (this module's `main`):
   `publish_architectures(...)` gathers that candidate's engine of every architecture (`assemble`)
   and publishes one `tensorrt_plan` version whose `cc_model_filenames` maps each compute capability
   to its engine. It refuses when one architecture's engine is missing. The operator never touches a
   model file.

Paths: spec.artifacts is a local path or pvc://claim/path (mounted into both Jobs); s3:// is refused
by the operator's validation for this hand-over.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from lathe.api.spec import ModelOptimizationSpec
from lathe.api.status import Published
from lathe.storage.paths import PathRefused, check_name, safe_join

from .config import ConfigError, onnx_signature
from .repository import PublishError, resolve_repository

ENGINE, SOURCE = "model.plan", "source.onnx"
EXIT_BAD_INPUT = 2  # as the worker's: retrying cannot help


def sm(compute_capability: str) -> str:
    """"8.9" -> "sm89" ("10.0" -> "sm100")."""
    major, minor = compute_capability.split(".")
    return f"sm{major}{minor}"


def engines_root(spec: ModelOptimizationSpec, resource: str, generation: int) -> Path:
    """`<spec.artifacts>/<namespace>/<name>/generation-<n>` in this process (a path or a mounted claim)."""
    if not spec.artifacts:
        raise PublishError("spec.artifacts is required with spec.target.gpu.architectures: each architecture's "
                           "worker keeps its engines there for the publish Job")
    if spec.artifacts.startswith("s3://"):
        raise PublishError("spec.artifacts: s3:// is not supported for the per-architecture engines "
                           "(a path or pvc://claim/path)")
    namespace, _, name = resource.partition("/")
    return safe_join(resolve_repository(spec.artifacts), f"{namespace}/{name}/generation-{generation}",
                     "spec.artifacts")


def engine_dir(spec: ModelOptimizationSpec, resource: str, generation: int, compute_capability: str,
               candidate: str) -> Path:
    try:
        check_name(candidate, "candidate")
    except PathRefused as e:
        raise PublishError(str(e)) from None
    return safe_join(engines_root(spec, resource, generation), f"{sm(compute_capability)}/{candidate}", "candidate")


def keep_engine(spec: ModelOptimizationSpec, resource: str, generation: int, compute_capability: str,
                candidate: str, engine: str | os.PathLike, source_onnx: str | os.PathLike) -> Path:
    """Worker side (LATHE_GPU_ARCH set): keep one passed candidate's engine and its source graph where
    the publish Job will look. Written to a temporary folder, then renamed in (a retried Job replaces
    what an earlier attempt left). Returns the folder."""
    dest = engine_dir(spec, resource, generation, compute_capability, candidate)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copy2(engine, tmp / ENGINE)
    shutil.copy2(source_onnx, tmp / SOURCE)
    (tmp / "lathe-arch.json").write_text(json.dumps({"computeCapability": compute_capability,
                                                     "candidate": candidate}))
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(tmp, dest)
    return dest


def assemble(per_arch: Mapping[str, str | os.PathLike], expected: list[str] | None = None) -> dict[str, Path]:
    """{compute capability: folder holding model.plan and source.onnx} -> the artifacts
    TensorRTFlavour publishes with cc_model_filenames ({"model_sm89.plan": ..., "source.onnx": ...}).
    Refuses (PublishError) when an expected architecture has no engine, or when the architectures'
    source graphs do not share one signature (one config.pbtxt serves them all)."""
    expected = list(expected) if expected is not None else list(per_arch)
    missing = [cc for cc in expected if cc not in per_arch or not (Path(per_arch[cc]) / ENGINE).is_file()]
    if missing:
        where = "; ".join(f"{cc}: {Path(per_arch[cc]) / ENGINE if cc in per_arch else 'no folder'}" for cc in missing)
        raise PublishError(f"nothing published: no engine for architecture {', '.join(missing)} ({where})")
    out: dict[str, Path] = {}
    first_sig, first_cc = None, None
    for cc in expected:
        folder = Path(per_arch[cc])
        src = folder / SOURCE
        if not src.is_file():
            raise PublishError(f"nothing published: architecture {cc} kept no {SOURCE} beside its engine ({folder})")
        try:
            sig = onnx_signature(src)
        except ConfigError as e:
            raise PublishError(f"architecture {cc}: {e}") from e
        if first_sig is None:
            first_sig, first_cc = sig, cc
            out[SOURCE] = src
        elif sig != first_sig:
            raise PublishError(f"nothing published: the graphs of architectures {first_cc} and {cc} differ in "
                               f"inputs/outputs ({first_sig} vs {sig}); one version needs one signature")
        out[f"model_{sm(cc)}.plan"] = folder / ENGINE
    return out


def publish_architectures(spec: ModelOptimizationSpec, resource: str, generation: int, candidate: str) -> Published:
    """Publish Job side: `candidate`'s engines of every spec.target.gpu.architectures entry as one
    tensorrt_plan version (cc_model_filenames)."""
    from .repository import publish

    if spec.publish is None:
        raise PublishError("spec.publish is not set: nothing to publish")
    ccs = [a.compute_capability for a in spec.target.gpu.architectures]
    per_arch = {cc: engine_dir(spec, resource, generation, cc, candidate) for cc in ccs}
    files = assemble({cc: d for cc, d in per_arch.items() if d.is_dir()}, ccs)
    return publish(spec.publish.repository, spec.publish.model_name, files, "tensorrt", spec.publish, candidate,
                   flavour="tensorrt")


def main(argv: list[str] | None = None) -> int:
    """`python -m lathe.serving.architectures [--workdir W] [--termination-log PATH]`: the publish Job.
    Reads LATHE_SPEC, LATHE_RESOURCE, LATHE_GENERATION and LATHE_PUBLISH_CANDIDATE; writes
    {"published": {...}} (or {"stage": "publish", "error": ...}) to the termination log."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lathe.serving.architectures")
    ap.add_argument("--workdir")
    ap.add_argument("--termination-log", default="/dev/termination-log")
    args = ap.parse_args(argv)

    def done(doc: dict, code: int) -> int:
        text = json.dumps(doc, separators=(",", ":"))
        print(text)
        try:
            Path(args.termination_log).write_text(text[:4000])
        except OSError as e:
            print(f"could not write the termination log {args.termination_log}: {e}", file=sys.stderr)
        return code

    try:
        spec = ModelOptimizationSpec.model_validate_json(os.environ["LATHE_SPEC"])
        published = publish_architectures(spec, os.environ["LATHE_RESOURCE"], int(os.environ["LATHE_GENERATION"]),
                                          os.environ["LATHE_PUBLISH_CANDIDATE"])
    except (PublishError, ConfigError, KeyError, ValueError) as e:
        return done({"stage": "publish", "error": str(e), "kind": "InvalidInput"}, EXIT_BAD_INPUT)
    except OSError as e:
        return done({"stage": "publish", "error": str(e)}, 1)
    return done({"published": published.model_dump(by_alias=True, exclude_none=True)}, 0)


if __name__ == "__main__":
    raise SystemExit(main())
