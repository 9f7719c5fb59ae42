"""Checks a spec that the API server's schema accepted but that can still be wrong.

Pure: everything that needs the outside world (does a PVC exist, does a URL answer) comes in
through `reachable`, so the rules are testable without a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from lathe.api.spec import ModelOptimizationSpec, Runtime, runtimes_of
from lathe.storage.uri import SCHEMES, parse_uri

# uri -> None when reachable, else why not
Reachability = Callable[[str], str | None]


def _path(loc: tuple[Any, ...]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse(obj: dict[str, Any]) -> tuple[ModelOptimizationSpec | None, list[str]]:
    try:
        return ModelOptimizationSpec.model_validate(obj), []
    except ValidationError as e:
        return None, [f"{_path(err['loc'])}: {err['msg']}" for err in e.errors()]


def problems(spec: ModelOptimizationSpec, reachable: Reachability | None = None) -> list[str]:
    """Everything wrong with a schema-valid spec, each message naming its field."""
    from lathe.worker.passes import validate_candidates  # light: no torch/onnxruntime imported

    out = list(validate_candidates(spec))
    allowed = runtimes_of(spec)
    for i, cand in enumerate(spec.candidates):
        if cand.runtime and Runtime(cand.runtime) not in allowed:
            out.append(f"spec.candidates[{i}].runtime: {cand.runtime} is not in the target's runtimes "
                       f"({', '.join(allowed)})")
    names = [c.name for c in spec.candidates]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        out.append(f"spec.candidates: name {dup!r} is used more than once")
    if spec.tensorrt and spec.model.inputs:
        declared = {i.name for i in spec.model.inputs}
        for i, prof in enumerate(spec.tensorrt.profiles):
            if prof.input not in declared:
                out.append(f"spec.tensorrt.profiles[{i}].input: the model has no input {prof.input!r} "
                           f"(inputs: {', '.join(sorted(declared))})")
    if spec.model.format != "onnx" and not spec.model.inputs:
        out.append(f"spec.model.inputs: a {spec.model.format} model needs its inputs declared to be exported")

    out.extend(_location_problems(spec, reachable))
    out.extend(_publish_problems(spec))
    return out


def _location_problems(spec: ModelOptimizationSpec, reachable: Reachability | None) -> list[str]:
    """Every location parses, can be read (or written) by the worker, and has a sha256 where it
    is fetched over https://. Each entry: (field of the uri, its value, field of its sha256 or
    None when the location is written, not read)."""
    locations: list[tuple[str, str, str | None]] = [("spec.model.uri", spec.model.uri, "spec.model.sha256")]
    shas = {"spec.model.sha256": spec.model.sha256}
    for name, ds in (("validation", spec.data.validation), ("calibration", spec.data.calibration)):
        if ds is not None:
            locations.append((f"spec.data.{name}.uri", ds.uri, f"spec.data.{name}.sha256"))
            shas[f"spec.data.{name}.sha256"] = ds.sha256
    if spec.publish:
        locations.append(("spec.publish.repository", spec.publish.repository, None))
    if spec.artifacts:
        locations.append(("spec.artifacts", spec.artifacts, None))
    out = []
    for field, uri, sha_field in locations:
        try:
            scheme, _, _ = parse_uri(uri)
        except ValueError as e:
            out.append(f"{field}: {e}")
            continue
        if scheme == "s3":
            # Refused whatever the worker image holds: the operator cannot see which image a Job
            # runs, and the one we build has no S3 client (no boto3 in the worker extra or
            # images/worker.lock; repository and artifact writes have no S3 path at all).
            # S3 support is its own issue (15).
            out.append(f"{field}: s3:// is not supported by this build yet (no S3 client in the worker image); "
                       "use a path, pvc://claim/path" + (" or https:// with a sha256" if sha_field else ""))
            continue
        if scheme == "https" and sha_field is None:
            out.append(f"{field}: https:// can only be read, not written")
            continue
        if scheme == "https" and sha_field and not shas[sha_field]:
            what = "model" if field == "spec.model.uri" else "data set"
            out.append(f"{sha_field}: required for an https:// {what} (the worker verifies what it downloads)")
        if reachable is not None:
            why = reachable(uri)
            if why:
                out.append(f"{field}: {uri} is unreachable: {why}")
    return out


def _publish_problems(spec: ModelOptimizationSpec) -> list[str]:
    pub = spec.publish
    if pub is None:
        return []
    out = []
    # The worker only writes the version into the repository; Triton is called (load, route,
    # metrics, unload) by the rollout alone (controller/plan.py starts one only with both set).
    if pub.triton_url and pub.rollout is None:
        out.append("spec.publish.tritonUrl: only used by a rollout: add spec.publish.rollout or remove it")
    return out


__all__ = ["parse", "problems", "SCHEMES"]
