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

    locations = [("spec.model.uri", spec.model.uri), ("spec.data.validation.uri", spec.data.validation.uri)]
    if spec.data.calibration:
        locations.append(("spec.data.calibration.uri", spec.data.calibration.uri))
    if spec.publish:
        locations.append(("spec.publish.repository", spec.publish.repository))
    if spec.artifacts:
        locations.append(("spec.artifacts", spec.artifacts))
    for field, uri in locations:
        try:
            scheme, _, _ = parse_uri(uri)
        except ValueError as e:
            out.append(f"{field}: {e}")
            continue
        if scheme == "https" and field != "spec.model.uri" and "data" not in field:
            out.append(f"{field}: https:// can only be read, not written")
            continue
        if scheme == "https" and field == "spec.model.uri" and not spec.model.sha256:
            out.append("spec.model.sha256: required for an https:// model")
        if reachable is not None:
            why = reachable(uri)
            if why:
                out.append(f"{field}: {uri} is unreachable: {why}")
    return out


__all__ = ["parse", "problems", "SCHEMES"]
