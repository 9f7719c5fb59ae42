"""Checks a spec that the API server's schema accepted but that can still be wrong.

Pure: everything that needs the outside world (does a PVC exist, does a URL answer) comes in
through `reachable`, so the rules are testable without a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from lathe.api.spec import ModelOptimizationSpec, Runtime, runtimes_of
from lathe.evaluate.batch_memory import oversized, parse_quantity, sample_bytes
from lathe.storage.secrets import BY_SCHEME, CONTRACTS
from lathe.storage.uri import SCHEMES, parse_uri

# uri -> None when reachable, else why not
Reachability = Callable[[str], str | None]
# Secret name -> its key names, or why it cannot be read (values never come in here)
SecretKeys = Callable[[str], "set[str] | str"]
S3_KEYS_REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Object stores Triton 2.51 cannot read a repository from (docs/storage.md): its as:// client only
# reaches https://<account>.blob.core.windows.net, with no endpoint setting.
NOT_A_TRITON_REPOSITORY = {"az": "Triton reads Azure Blob Storage only as as://<account>/<container>/<path> at https://<account>.blob.core.windows.net (no endpoint setting), which Lathe cannot test against an emulator; keep the repository on a path, pvc://, s3:// or gs://"}


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


def problems(spec: ModelOptimizationSpec, reachable: Reachability | None = None,
             secret_keys: SecretKeys | None = None, memory_limit: str | None = None) -> list[str]:
    """Everything wrong with a schema-valid spec, each message naming its field. `memory_limit`: the
    worker's memory limit when the spec sets none (the operator's configured default)."""
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
    if spec.model.format not in ("onnx", "hf", "gguf") and not spec.model.inputs:
        out.append(f"spec.model.inputs: a {spec.model.format} model needs its inputs declared to be exported")

    if spec.data.training is not None and spec.data.training.uri == spec.data.validation.uri:
        out.append("spec.data.training.uri: is the validation set: candidates trained on it would be measured on "
                   "data they have seen (their accuracy optimistic); give a separate training set")
    out.extend(_architecture_problems(spec))
    out.extend(_search_problems(spec))
    out.extend(_causal_lm_problems(spec))
    out.extend(_location_problems(spec, reachable))
    out.extend(_publish_problems(spec))
    out.extend(_secret_problems(spec, secret_keys))
    out.extend(_memory_problems(spec, memory_limit))
    return out


def _memory_problems(spec: ModelOptimizationSpec, default_limit: str | None) -> list[str]:
    """A batch size whose inputs alone exceed the worker's memory limit, when the declared shapes tell
    (dynamic dimensions: the worker checks with the data's real arrays)."""
    limit = spec.target.resources.limits.get("memory") or default_limit
    per_sample = sample_bytes(spec.model.inputs)
    if not limit or per_sample is None:
        return []
    if parse_quantity(limit) is None:
        return [f"spec.target.resources.limits.memory: {limit!r} is not a quantity (e.g. 4Gi, 1500Mi)"]
    shapes = ", ".join(f"{i.name} {list(i.shape)} {i.dtype}" for i in spec.model.inputs)
    why = oversized(spec.target.batch_sizes, per_sample, limit, f"spec.model.inputs: {shapes}")
    return [f"spec.target.batchSizes: {why}"] if why else []


def _architecture_problems(spec: ModelOptimizationSpec) -> list[str]:
    """One engine per architecture: each architecture's worker keeps its engines in spec.artifacts
    (a path or pvc://, mounted into the publish Job), and the version is a tensorrt_plan."""
    archs = spec.target.gpu.architectures
    if not archs:
        return []
    if spec.target.device != "gpu":
        return ["spec.target.gpu.architectures: engines per architecture need target.device gpu"]
    out = []
    if spec.publish is not None:
        if not spec.artifacts:
            out.append("spec.artifacts: required with spec.target.gpu.architectures: each "
                       "architecture's worker keeps its engines there (path or pvc://claim/path) for the Job "
                       "that publishes them as one version")
        elif spec.artifacts.split("://", 1)[0] in BY_SCHEME and "://" in spec.artifacts:
            out.append(f"spec.artifacts: {spec.artifacts.split('://', 1)[0]}:// cannot hold the per-architecture "
                       "engines yet; use a path or pvc://claim/path with spec.target.gpu.architectures")
        if spec.publish.flavour not in ("auto", "tensorrt"):
            out.append(f"spec.publish.flavour: {spec.publish.flavour} cannot serve TensorRT engines per "
                       "architecture; use auto or tensorrt")
    return out


def _search_problems(spec: ModelOptimizationSpec) -> list[str]:
    """A split search hands each build Job's models to the benchmark Job through spec.artifacts."""
    if spec.search.parallelism > 1 and not spec.artifacts:
        return [f"spec.artifacts: required with spec.search.parallelism {spec.search.parallelism}: each build Job "
                "hands its built candidates to the benchmark Job there (a path on shared storage, pvc://claim/path "
                "or s3://bucket/prefix); or set spec.search.parallelism to 1"]
    return []


_LM_FORMATS = ("hf", "gguf")
_ARCHIVES = (".tar", ".tar.gz", ".tgz")
_REMOTE = ("s3://", "gs://", "az://", "https://")  # an hf folder comes from these as one archive


def _causal_lm_problems(spec: ModelOptimizationSpec) -> list[str]:
    """Task causal-lm takes its own formats, metric, runtime, objective and budget fields; and runs on the CPU."""
    lm = spec.task.type == "causal-lm"
    out = []
    if not lm:
        if spec.model.format in _LM_FORMATS:
            out.append(f"spec.task.type: a {spec.model.format} checkpoint is read as a causal LM: set task.type "
                       "causal-lm")
        if spec.task.metric == "perplexity":
            out.append("spec.task.metric: perplexity measures task causal-lm only")
        if "onnxruntime-genai" in spec.target.runtimes or any(c.runtime == "onnxruntime-genai" for c in spec.candidates):
            out.append("spec.target.runtimes: onnxruntime-genai serves task causal-lm only")
        if spec.objective == "first-token":
            out.append("spec.objective: first-token is a causal-lm objective (time to first token)")
        for f in ("max_perplexity_increase", "min_token_agreement"):
            if getattr(spec.budget, f) is not None:
                out.append(f"spec.budget.{_camel(f)}: only used by task causal-lm")
        for f in ("prompts", "multiple_choice"):
            if getattr(spec.data, f) is not None:
                out.append(f"spec.data.{_camel(f)}: only used by task causal-lm")
        return out
    if spec.target.device == "gpu":
        out.append("spec.target.device: task causal-lm runs on the CPU (runtime onnxruntime-genai): its GPU path, "
                   "TensorRT-LLM engines with FP8/NVFP4 weights, needs TensorRT-LLM and a GPU, which Lathe cannot "
                   "install or run yet; use target.device cpu")
    if spec.model.format not in _LM_FORMATS:
        out.append(f"spec.model.format: task causal-lm reads an hf checkpoint folder or a gguf file, not "
                   f"{spec.model.format}")
    if spec.task.metric is not None and spec.task.metric != "perplexity":
        out.append(f"spec.task.metric: task causal-lm is measured by perplexity (and next-token agreement), not "
                   f"{spec.task.metric}")
    bad = [r for r in spec.target.runtimes if r != "onnxruntime-genai"]
    if bad:
        out.append(f"spec.target.runtimes: task causal-lm runs on onnxruntime-genai only, not {', '.join(bad)}")
    if spec.model.format == "hf" and spec.model.uri.startswith(_REMOTE) \
            and not spec.model.uri.split("?", 1)[0].endswith(_ARCHIVES):
        out.append("spec.model.uri: an hf checkpoint from an object store or https:// is one .tar or .tar.gz of the folder "
                   "(a path or pvc:// names the folder itself)")
    if spec.model.format == "hf" and spec.model.sha256 and not spec.model.uri.startswith(_REMOTE) \
            and not spec.model.uri.endswith(_ARCHIVES):
        out.append("spec.model.sha256: an hf checkpoint folder has no single sha256; give it for a .tar/.tar.gz")
    return out


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(w.title() for w in rest)


def _secret_problems(spec: ModelOptimizationSpec, secret_keys: SecretKeys | None) -> list[str]:
    """Each spec.storage entry's Secret exists and has the key names its store needs (storage/secrets.py)."""
    if spec.storage is None or secret_keys is None:
        return []
    out = []
    for field, contract in CONTRACTS.items():
        entry = getattr(spec.storage, field)
        if entry is None:
            continue
        keys = secret_keys(entry.secret_ref)
        if isinstance(keys, str):
            out.append(f"spec.storage.{field}.secretRef: {keys}")
            continue
        missing = contract.missing(keys)
        if missing:
            out.append(f"spec.storage.{field}.secretRef: Secret {entry.secret_ref!r} has no key {', '.join(missing)} "
                       f"(keys present: {', '.join(sorted(keys)) or 'none'})")
    return out


def _location_problems(spec: ModelOptimizationSpec, reachable: Reachability | None) -> list[str]:
    """Every location parses, can be read (or written) by the worker, and has a sha256 where it
    is fetched over https://. Each entry: (field of the uri, its value, field of its sha256 or
    None when the location is written, not read)."""
    locations: list[tuple[str, str, str | None]] = [("spec.model.uri", spec.model.uri, "spec.model.sha256")]
    shas = {"spec.model.sha256": spec.model.sha256}
    for name, ds in (("validation", spec.data.validation), ("calibration", spec.data.calibration),
                     ("training", spec.data.training)):
        if ds is not None:
            locations.append((f"spec.data.{name}.uri", ds.uri, f"spec.data.{name}.sha256"))
            shas[f"spec.data.{name}.sha256"] = ds.sha256
    if spec.publish:
        locations.append(("spec.publish.repository", spec.publish.repository, None))
    if spec.artifacts:
        locations.append(("spec.artifacts", spec.artifacts, None))
    capture = spec.publish.rollout.capture if spec.publish and spec.publish.rollout else None
    if capture is not None and capture.enabled and capture.uri:
        locations.append(("spec.publish.rollout.capture.uri", capture.uri, None))
    out = []
    for field, uri, sha_field in locations:
        try:
            scheme, _, path = parse_uri(uri)
        except ValueError as e:
            out.append(f"{field}: {e}")
            continue
        if scheme in BY_SCHEME:
            contract = BY_SCHEME[scheme]
            if spec.storage is None or getattr(spec.storage, contract.field) is None:
                out.append(f"{field}: {scheme}:// needs credentials: set spec.storage.{contract.field}.secretRef to "
                           f"a Secret with {contract.describe()}")
            elif sha_field is not None and (not path or path.endswith("/")):
                out.append(f"{field}: {uri}: expected {scheme}://{'container' if scheme == 'az' else 'bucket'}/key "
                           "of an object")
            elif field == "spec.publish.repository" and scheme in NOT_A_TRITON_REPOSITORY:
                out.append(f"{field}: {scheme}:// cannot hold a Triton repository: {NOT_A_TRITON_REPOSITORY[scheme]}")
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
    if pub.rollout is not None and pub.rollout.router == "gateway":
        for i, step in enumerate(pub.rollout.steps):
            if step.mirror:  # a Gateway's RequestMirror discards the copy's answer: nothing to compare
                out.append(f"spec.publish.rollout.steps[{i}].mirror: answers are compared by Lathe's router only "
                           "(router: triton); with router: gateway, mirror with the HTTPRoute's RequestMirror "
                           "filter yourself (docs/serving.md) and set mirror: 0")
    causal = str(spec.task.type) == "causal-lm"
    if pub.flavour == "genai" and not causal:
        out.append("spec.publish.flavour: genai serves causal LMs (task causal-lm, runtime onnxruntime-genai); "
                   "use auto for this task")
    elif causal and pub.flavour not in ("auto", "genai"):
        out.append(f"spec.publish.flavour: a causal LM is served as genai (a decoupled model that streams tokens), "
                   f"not {pub.flavour}; use auto or genai")
    if pub.rollout is not None:
        for i, step in enumerate(pub.rollout.steps):
            if step.weight == 0 and not step.mirror:
                out.append(f"spec.publish.rollout.steps[{i}]: weight 0 sends the canary nothing; "
                           "give it a weight, or mirror > 0 for a shadow step")
        out.extend(_capture_problems(spec))
    return out


def _capture_problems(spec: ModelOptimizationSpec) -> list[str]:
    cap = spec.publish.rollout.capture
    if not cap.enabled:
        return []
    out = []
    if spec.publish.rollout.router != "triton":
        out.append("spec.publish.rollout.capture.enabled: inputs are captured by Lathe's router only (router: triton)")
    if str(spec.task.type) == "causal-lm":
        out.append("spec.publish.rollout.capture.enabled: live prompts of causal LMs are not captured (the streaming "
                   "router samples nothing); set enabled: false")
    if not cap.uri and not spec.artifacts:
        out.append("spec.publish.rollout.capture.uri: say where the capture goes (or set spec.artifacts: it then "
                   "goes under <artifacts>/<namespace>/<name>/generation-<n>/capture)")
    return out


__all__ = ["parse", "problems", "SCHEMES"]
