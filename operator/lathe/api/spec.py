"""The ModelOptimization spec: the one source of truth for the CRD schema, the operator and the worker.

Field names are camelCase on the wire (aliases) and snake_case in Python. Enums, ranges and
required fields live here so that the generated CRD lets the API server reject bad resources
before the operator ever sees them; `cel()` attaches cross-field rules (x-kubernetes-validations).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from lathe.storage import paths

GROUP = "lathe.dev"
VERSION = "v1alpha1"
KIND = "ModelOptimization"
PLURAL = "modeloptimizations"
SINGULAR = "modeloptimization"
SHORT_NAMES = ["mopt"]


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """Cross-field rules the API server evaluates (CEL): (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


def _location(value: str) -> str:
    return paths.check_location(value, value)


def _local(value: str) -> str:
    if "://" in value:
        raise ValueError(f"{value!r}: a folder on the worker, not a URI")
    return paths.check_local(value, value)


def _name(value: str) -> str:
    return paths.check_name(value, value)


# The API server checks what the worker checks again (storage.paths: the same rules as RE2 for CEL).
_LOCATION_MESSAGE = ("a location is a path or scheme://name/path: no '..' segment anywhere; after scheme://name/ the "
                     "path is relative to its claim, bucket or prefix, with no '.' or empty ('//') segment; no "
                     "backslash or NUL (docs/storage.md)")
Location = Annotated[str, AfterValidator(_location), Field(min_length=1, max_length=4096, json_schema_extra=cel((
    f"(self.startsWith('file://') || !self.contains('://')) ? self.matches(r'{paths.LOCATION_RE_LOCAL}')"
    f" : self.matches(r'{paths.LOCATION_RE_URI}')", _LOCATION_MESSAGE)))]
LocalFolder = Annotated[str, AfterValidator(_local), Field(min_length=1, max_length=4096, json_schema_extra=cel((
    f"!self.contains('://') && self.matches(r'{paths.LOCATION_RE_LOCAL}')",
    "a folder on the worker: a path with no '..' segment, backslash or NUL")))]
FolderName = Annotated[str, AfterValidator(_name), Field(min_length=1, max_length=255, json_schema_extra=cel((
    f"self.matches(r'{paths.NAME_RE}')",
    "one folder name: letters, digits, '_', '-' and '.', not starting with '.' (never '.' or '..')")))]


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              use_enum_values=True, protected_namespaces=())


class ModelFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"
    pytorch_export = "pytorch-export"
    hf = "hf"      # task causal-lm: a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer)
    gguf = "gguf"  # task causal-lm: one .gguf file (llama.cpp), dequantized to FP32 on intake


class TaskType(StrEnum):
    classification = "classification"
    embedding = "embedding"
    regression = "regression"
    generic = "generic"
    causal_lm = "causal-lm"


class Metric(StrEnum):
    top1 = "top1"
    cosine = "cosine"
    mse = "mse"
    mae = "mae"
    agreement = "agreement"
    perplexity = "perplexity"  # task causal-lm: token-weighted, over fixed windows of the validation text


# Each task's metric unless the spec names one; "agreement" compares argmax/values with the baseline.
DEFAULT_METRIC = {
    TaskType.classification: Metric.top1,
    TaskType.embedding: Metric.cosine,
    TaskType.regression: Metric.mse,
    TaskType.generic: Metric.agreement,
    TaskType.causal_lm: Metric.perplexity,
}


class Device(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class Runtime(StrEnum):
    onnxruntime = "onnxruntime"
    openvino = "openvino"
    tensorrt = "tensorrt"
    onnxruntime_genai = "onnxruntime-genai"  # task causal-lm: the generation runtime over the model builder's graph


class Precision(StrEnum):
    int8 = "int8"
    fp16 = "fp16"
    int4 = "int4"
    fp8 = "fp8"    # runtime tensorrt only: FP8 (E4M3) Q/DQ, compute capability 8.9 and later
    bf16 = "bf16"  # runtime tensorrt only: BF16 casts, compute capability 8.0 and later


class QuantMode(StrEnum):
    dynamic = "dynamic"
    static = "static"
    qat = "qat"


class CalibrationMethod(StrEnum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class PruneMethod(StrEnum):
    structured = "structured"
    unstructured = "unstructured"
    two_four = "2:4"


class DistillLoss(StrEnum):
    kl = "kl"
    mse = "mse"
    cosine = "cosine"


class IntType(StrEnum):
    uint8 = "uint8"
    int8 = "int8"


class Objective(StrEnum):
    latency = "latency"  # causal-lm: time per generated token at batch 1, i.e. decode tokens/s
    throughput = "throughput"  # causal-lm: tokens/s of target.streams concurrent generations
    size = "size"
    first_token = "first-token"  # causal-lm only: time to first token at the first of target.promptTokens


class WeightAlgorithm(StrEnum):
    """How weight-only INT4/INT8 (MatMulNBits) picks each block's grid (runtime onnxruntime-genai)."""
    rtn = "rtn"          # round to nearest: the model builder's default
    k_quant = "k-quant"  # the builder's k_quant search of each block's scale
    hqq = "hqq"          # half-quadratic quantization (ONNX Runtime), no data
    gptq = "gptq"        # GPTQ (ONNX Runtime) on the calibration text
    awq = "awq"          # activation-aware (NVIDIA ModelOpt's ONNX awq_lite) on the calibration text


class InputSpec(Model):
    name: str = Field(min_length=1, description="Model input name.")
    shape: list[int | str] = Field(
        default_factory=list,
        description="Dimensions; a string names a dynamic axis (e.g. batch, sequence), an int is fixed.",
    )
    dtype: str = Field("float32", pattern=r"^(float32|float16|int64|int32|int8|uint8|bool)$")


class ModelSource(Model):
    uri: Location = Field(description="Where the model is: a path, pvc://claim/path, s3://bucket/key, gs://bucket/key, az://container/key (each needs its spec.storage entry) or https://... (needs sha256).")
    format: ModelFormat = Field(ModelFormat.onnx, description="onnx, torchscript (torch.jit.save) or pytorch-export (torch.export.save); task causal-lm: hf (a checkpoint folder with config.json, *.safetensors and tokenizer files; from s3:// or https:// a .tar or .tar.gz of it) or gguf (one .gguf file).")
    sha256: str | None = Field(None, pattern=r"^[a-f0-9]{64}$", description="Verified before anything runs when given.")
    inputs: list[InputSpec] = Field(default_factory=list, description="Input names, shapes and dtypes; required to export PyTorch models.")


class Task(Model):
    type: TaskType = Field(TaskType.classification, description="What the model does; picks the default metric.")
    metric: Metric | None = Field(None, description="Accuracy metric; default: top1 for classification, cosine for embedding, mse for regression, agreement otherwise.")
    output: str | None = Field(None, description="Output to evaluate; default: the first model output.")
    window_tokens: int = Field(256, ge=16, le=8192, description="Task causal-lm: perplexity and next-token agreement are measured over non-overlapping windows of this many tokens (each window's first token has no context and is not scored).")


class DataSet(Model):
    uri: Location = Field(description="An .npz file of arrays keyed by model input name, with optional `labels` (task causal-lm: a .txt file or a .jsonl of {\"text\": ...} documents): a path, pvc://claim/path, s3://bucket/key, gs://bucket/key, az://container/key or https://... (needs sha256).")
    sha256: str | None = Field(None, pattern=r"^[a-f0-9]{64}$", description="Verified before anything runs when given; required for https://.")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many samples (task causal-lm: windows of task.windowTokens tokens).")


class Coverage(Model):
    min_samples: int = Field(16, ge=1, description="Static quantization fails below this many calibration samples.")
    warn_samples: int = Field(100, ge=1, description="A warning is reported below this many calibration samples.")
    require_class_coverage: bool = Field(True, description="Every class seen in validation must be in calibration.")
    max_out_of_range: float = Field(0.05, ge=0, le=1, description="Largest share of validation values outside the calibrated input ranges.")


class Data(Model):
    calibration: DataSet | None = Field(None, description="Calibration set; defaults to the validation set (reported as such).")
    validation: DataSet = Field(description="Validation set every candidate and the baseline are measured on.")
    prompts: DataSet | None = Field(None, description="Task causal-lm: a .jsonl of {\"prompt\": ...} lines; every candidate generates from the first ones before it is judged (default: the start of the validation text).")
    multiple_choice: DataSet | None = Field(None, description="Task causal-lm, optional: a .jsonl of {\"context\": ..., \"choices\": [...], \"answer\": index} lines, scored by log-likelihood of each choice (reported, not gated).")
    training: DataSet | None = Field(None, description="Training set (same .npz format; labels optional) for the passes that train: quantize mode qat and distill (required) and structured pruning's fine-tuning (used when given, else the calibration set). Never the validation set: what a candidate is trained on must not be what the gate measures it on.")
    coverage: Coverage = Field(default_factory=Coverage)


class Toleration(Model):
    key: str | None = None
    operator: str | None = Field(None, pattern=r"^(Exists|Equal)$")
    value: str | None = None
    effect: str | None = Field(None, pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$")
    toleration_seconds: int | None = None


class Resources(Model):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class GpuArchitecture(Model):
    compute_capability: str = Field(pattern=r"^[1-9][0-9]?\.[0-9]$", max_length=4, description="CUDA compute capability the engine is built for: 8.0 (A100), 8.6 (A10), 8.9 (L4, L40S), 9.0 (H100, H200), 10.0 (B200).")
    product: str | None = Field(None, min_length=1, max_length=63, description="GPU feature discovery's nvidia.com/gpu.product label (NVIDIA-L4); default: any GPU of this compute capability.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="More node labels this architecture's build Job needs, beside the GPU feature discovery ones.")


class Gpu(Model):
    count: int = Field(1, ge=1, le=16)
    resource_name: str = Field("nvidia.com/gpu", min_length=1)
    # a list keyed by computeCapability: the API server itself refuses one named twice (a CEL rule comparing
    # every pair costs more than the API server allows)
    architectures: list[GpuArchitecture] = Field(default_factory=list, max_length=8, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["computeCapability"]}, description="One TensorRT engine per entry, each built and validated by its own Job on a node of that architecture, published together as one version (cc_model_filenames) only when every one passed; empty: one engine for whatever GPU the Job lands on.")


class Target(Model):
    device: Device = Field(Device.cpu)
    runtimes: list[Runtime] = Field(
        default_factory=list,
        description="Runtimes candidates may use; default: onnxruntime and openvino on cpu, tensorrt on gpu, onnxruntime-genai for task causal-lm.",
    )
    threads: int = Field(0, ge=0, le=256, description="Intra-op threads for benchmarks; 0 = the cores the worker has.")
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1], min_length=1, description="Batch sizes benchmarked; the first one decides.")
    tie_break_seconds: float | None = Field(None, ge=0, le=3600, description="Seconds of further benchmarking allowed to settle a tie on speed: when the 95% speedup intervals of the fastest candidates within budget overlap, the baseline and every benchmarked candidate are timed in more interleaved rounds at the deciding batch size (the first; the largest for objective throughput) until the fastest one's interval separates from the others' or this time is spent. Unset: as long as the benchmark itself (the worker's --bench-seconds, 30 by default); 0: no further rounds. A tie that remains goes to an accuracy drop smaller by at least a fifth of the accuracy budget (maxAccuracyDrop, or maxRelativeDrop x the baseline's accuracy), then to a size at least 10% smaller, else to the highest point estimate.")
    prompt_tokens: list[Annotated[int, Field(ge=1, le=32768)]] = Field(default_factory=lambda: [128, 512], min_length=1, max_length=4, description="Task causal-lm: prompt lengths the time to first token is measured at (objective first-token: the first one decides).")
    streams: int = Field(4, ge=1, le=64, description="Task causal-lm: concurrent generations the throughput is measured with.")
    gpu: Gpu = Field(default_factory=Gpu)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)


class CalibrationSettings(Model):
    method: CalibrationMethod = CalibrationMethod.minmax
    percentile: float = Field(99.999, gt=50, le=100)
    samples: int | None = Field(None, ge=1, description="Calibration samples used by this pass; default: all.")


class FineTune(Model):
    epochs: int = Field(3, ge=0, le=100)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    early_stop_drop: float = Field(0.002, ge=0, description="Stop when the held-out accuracy (a split of the training data, or of the calibration set without one; never the validation set) falls by more than this below the best epoch.")


class QuantizationAwareTraining(Model):
    """Fake-quantized fine-tuning (quantize mode qat) with the forgetting guard."""

    epochs: int = Field(3, ge=1, le=5, description="Epochs over the training split (3-5 recommended; each one is scored on the held-out split).")
    learning_rate: float = Field(1e-5, ge=1e-7, le=0.1, description="Adam's learning rate; low by default so the model does not forget what it knew.")
    forgetting_guard: float = Field(0.02, ge=0, le=1, description="Stop when an epoch's held-out accuracy (fake-quantized) is more than this below the float model's and no better than the best epoch so far; the best epoch is kept.")
    held_out: float = Field(0.2, ge=0.05, le=0.5, description="Share of the training data held out to score each epoch (the validation set is never used).")
    batch_size: int = Field(32, ge=1, le=4096)


class Distillation(Model):
    """Knowledge distillation (pass distill): how the student learns from the teacher's outputs."""

    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature of loss kl (the KL term is multiplied by its square).")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation term; 1 - alpha goes to cross-entropy with the hard labels when the training set has class labels (0: labels alone, no teacher). Without labels the teacher alone is learned from.")
    loss: DistillLoss | None = Field(None, description="Output loss against the teacher: kl (softened class probabilities), mse or cosine (embeddings); default kl for classification, cosine otherwise.")
    feature_layers: list[str] = Field(default_factory=list, max_length=32, description="Teacher modules whose outputs the student also matches (MSE): a Conv/Linear/BatchNorm of a narrower CNN student (on the teacher's kept channels), or an encoder layer ending a block of a shallower student (e.g. bert.encoder.layer.5).")
    feature_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the feature-matching term.")
    epochs: int = Field(10, ge=1, le=50, description="Most epochs over the training split; each is scored on the held-out split.")
    learning_rate: float = Field(1e-4, ge=1e-7, le=0.01, description="Adam's learning rate; low: the student starts from the teacher's weights.")
    patience: int = Field(2, ge=1, le=50, description="Stop after this many epochs without a better held-out figure; the best epoch is kept.")
    held_out: float = Field(0.2, ge=0.05, le=0.5, description="Share of the training data held out to score each epoch (the validation set is never used).")
    batch_size: int = Field(32, ge=1, le=4096)


class PassSpec(Model):
    """One optimization step. `type` names a registered pass (quantize, prune, graph-optimize);
    the other fields are its settings, checked against that pass's own config by the operator."""

    model_config = ConfigDict(json_schema_extra=cel(
        ("!has(self.mode) || self.mode == 'dynamic' || !has(self.precision) || self.precision == 'int8'",
         "static and qat modes need precision int8"),
        ("self.type != 'prune' || has(self.method)", "a prune pass needs a method"),
    ))
    type: str = Field(min_length=1, description="Registered pass name: quantize, prune, distill, graph-optimize.")
    precision: Precision | None = None
    mode: QuantMode | None = None
    calibration: CalibrationSettings | None = None
    per_channel: bool | None = None
    activation_type: IntType | None = None
    weight_type: IntType | None = None
    op_types: list[str] | None = None
    exclude_nodes: list[str] | None = None
    keep_io_types: bool | None = None
    block_size: int | None = Field(None, ge=16, le=256)
    method: PruneMethod | None = None
    sparsity: float | None = Field(None, ge=0, le=1)
    fine_tune: FineTune | None = None
    qat: QuantizationAwareTraining | None = Field(None, description="Quantize mode qat: epochs, learning rate, forgetting guard, held-out share.")
    distillation: Distillation | None = Field(None, description="Pass distill: temperature, alpha, loss, feature matching, epochs, learning rate, early stop.")
    width: float | None = Field(None, gt=0, le=1, description="Pass distill: share of channels the student keeps in each prunable Conv/Linear (a narrower CNN; 0.5 = half width).")
    layers: int | None = Field(None, ge=1, le=1024, description="Pass distill: encoder layers the student keeps (a shallower transformer), evenly spaced with the first and the last (3 of 6: layers 0, 3, 5).")
    level: str | None = Field(None, pattern=r"^(basic|extended|all)$")
    preset: str | None = Field(None, pattern=r"^(performance|mixed)$")
    model_type: str | None = Field(None, pattern=r"^(transformer)$")
    algorithm: WeightAlgorithm | None = Field(None, description="Runtime onnxruntime-genai: how weight-only INT4/INT8 is rounded (rtn, k-quant, hqq, gptq, awq); default rtn.")
    accuracy_level: int | None = Field(None, ge=0, le=4, description="Runtime onnxruntime-genai: MatMulNBits' compute type: 4 = INT8 activations (the fast CPU path, default), 1 = FP32, 0 = the kernel's choice.")
    symmetric: bool | None = Field(None, description="Runtime onnxruntime-genai: symmetric weight grid (default true); false adds a zero point per block.")
    float_offset: bool | None = Field(None, description="Runtime onnxruntime-genai, algorithm rtn or hqq: each block's grid keeps a float offset instead of a rounded integer zero point (rtn: the grid starts exactly at the block's minimum; hqq: its own float zero points). MatMulNBits keeps the codes and scales; the offsets run beside it in FP32 as the input's block sums times the offsets (1/blockSize of the MatMul's work), because MatMulNBits' CPU kernels are about 200x slower with float zero points. A checkpoint whose weights already sit on such a grid (a Q4_1 GGUF, at block 32) is then held exactly.")
    int8_nodes: list[str] | None = Field(None, max_length=1024, description="Runtime onnxruntime-genai, precision int4: MatMuls (the builder's node names, e.g. /lm_head/MatMul) kept at 8 bits.")
    int8_sensitive: int | None = Field(None, ge=0, le=1024, description="Runtime onnxruntime-genai, precision int4: keep this many of the most sensitive MatMuls at 8 bits, ranked by ablation on the calibration text (each one's INT4 weights put back to FP32 in turn).")


class Fallback(Model):
    enabled: bool = Field(True, description="Keep the nodes that cost the most accuracy in float until the budget holds.")
    max_float_nodes: int = Field(16, ge=0, le=4096)


class Candidate(Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    runtime: Runtime | None = Field(None, description="Default: the first runtime of the target.")
    passes: list[PassSpec] = Field(default_factory=list, description="Applied in order; empty = the runtime's plain build.")
    fallback: Fallback | None = Field(None, description="Automatic mixed precision for quantized candidates.")


class Budget(Model):
    max_accuracy_drop: float | None = Field(None, ge=0, description="Largest absolute drop of the metric against the baseline (e.g. 0.01 = 1 point of top-1).")
    max_relative_drop: float | None = Field(None, ge=0, le=1, description="Largest drop relative to the baseline metric.")
    max_p99_latency_ms: float | None = Field(None, gt=0)
    min_speedup: float | None = Field(None, ge=0, description="Least speedup (baseline p50 / candidate p50 at the first batch size; throughput ratio for objective throughput). Unset: the speedup's 95% interval must lie above 1.0 (unless the objective is size); 0: no speed requirement.")
    max_size_mb: float | None = Field(None, gt=0)
    max_activation_out_of_range: float | None = Field(None, ge=0, le=1, description="Static INT8 (ONNX Runtime): reject a candidate when, for some quantized tensor, more than this share of validation activations falls outside its calibrated range (e.g. 0.01). Unset: reported, not gated.")
    max_perplexity_increase: float | None = Field(None, ge=0, le=10, description="Task causal-lm: largest perplexity increase relative to the FP32 model on the validation text (0.02 = +2%). Unset: 0.02, the upper end of the 1-2% loss careful LLM quantization aims for: INT8 weight-only measured +0.5% on SmolLM2-135M, round-to-nearest INT4 +31% (docs/llm.md), so 2% keeps the good candidates and refuses the broken ones.")
    min_token_agreement: float | None = Field(None, ge=0, le=1, description="Task causal-lm: least share of validation positions where the candidate's next-token top-1, fed the same text (teacher-forced), equals the FP32 model's. Unset: 0.95. Perplexity alone can hide a model that is right on average and wrong on the tokens that matter; greedy answers diverge within a few tokens even for INT8, so exact generation match is too harsh and this is the per-token figure instead.")


class TensorRTProfile(Model):
    input: str = Field(min_length=1)
    min: list[int] = Field(min_length=1)
    opt: list[int] = Field(min_length=1)
    max: list[int] = Field(min_length=1)


class TensorRTOptions(Model):
    profiles: list[TensorRTProfile] = Field(default_factory=list)
    workspace_mib: int = Field(4096, ge=1)
    optimization_level: int = Field(3, ge=0, le=5)
    timing_cache: LocalFolder | None = Field(None, description="A folder on the worker for TensorRT's timing caches (default: $LATHE_TRT_TIMING_CACHE, else the run's timing-cache/).")


class RolloutStep(Model):
    weight: int = Field(ge=0, le=100, description="Percent of traffic sent to the new version; 0 with mirror > 0 is a shadow step (the canary only sees copies).")
    pause_seconds: int = Field(30, ge=0)
    min_requests: int = Field(100, ge=0)
    mirror: int = Field(0, ge=0, le=100, description="Percent of requests also sent to the other version and the two answers compared (router: triton only); the client always gets the answer of the version its weight chose.")


class Analysis(Model):
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_latency_ratio: float = Field(1.5, gt=0, description="Canary mean latency / stable mean latency.")
    max_p99_latency_ms: float | None = Field(None, gt=0)
    min_agreement: float | None = Field(None, ge=0, le=1, description="Steps with mirror > 0: the least share of compared samples on which canary and stable agree (classification: same top-1; embedding: mean cosine similarity; causal LMs: scored tokens of stable's continuations where the canary's next-token top-1 equals stable's, teacher-forced; otherwise: outputs within agreementTolerance). Default from the budget: 1 - 2 x maxAccuracyDrop for top-1 and agreement, 1 - maxAccuracyDrop for cosine, minTokenAgreement for causal LMs.")
    max_perplexity_ratio: float | None = Field(None, ge=1, description="Causal LMs, steps with mirror > 0: the largest canary perplexity / stable perplexity on stable's mirrored continuations (both scored teacher-forced). Default from the budget: 1 + maxPerplexityIncrease.")
    min_compared_requests: int = Field(50, ge=1, description="Steps with mirror > 0 wait for this many compared requests before they can pass.")
    agreement_tolerance: float = Field(0.01, gt=0, description="Task type other/regression: outputs agree when |a - b| <= tolerance x (1 + |b|) elementwise.")
    mirror_timeout_ms: int = Field(1000, ge=1, le=60000, description="The most the router waits for a mirrored answer before counting it as a mirror failure (never seen by the client).")


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
Hostname = Annotated[str, Field(pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
                                max_length=253)]


class ParentRef(Model):
    name: str = Field(min_length=1, max_length=253, description="The Gateway the HTTPRoute attaches to.")
    namespace: str | None = Field(None, max_length=63, pattern=_DNS_LABEL,
                                  description="The Gateway's namespace (default: the resource's).")
    section_name: str | None = Field(None, max_length=253, pattern=_DNS_SUBDOMAIN, description="A listener of that Gateway.")


class GatewayRoute(Model):
    service: str = Field("triton", max_length=63, pattern=_DNS_LABEL, description="The Service in front of Triton's HTTP port.")
    port: int = Field(8000, ge=1, le=65535)
    parent_refs: list[ParentRef] = Field(default_factory=lambda: [ParentRef(name="gateway")], min_length=1, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)


class Capture(Model):
    """Opt-in sampling of live request inputs into a data set (docs/serving.md: privacy)."""
    enabled: bool = Field(False, description="Off by default: live inputs are user data. When on, the router keeps a sample of the inputs the stable version answers (and its answers) during the rollout.")
    sample_percent: float = Field(1.0, gt=0, le=100, description="Percent of the requests stable answers whose inputs are kept (every request's rows, spread evenly).")
    max_samples: int = Field(1000, ge=1, le=1000000, description="The most rows kept in all; later requests are counted, not kept.")
    max_mb: float = Field(64, gt=0, le=4096, description="The most megabytes of inputs kept in all.")
    uri: Location | None = Field(None, description="Where the capture is written (a path, pvc://claim/path on a claim the operator mounts, or s3://bucket/prefix); default <spec.artifacts>/<namespace>/<name>/generation-<n>/capture.")
    max_class_shift: float = Field(0.2, ge=0, le=1, description="Classification: warn when the class histogram of stable's answers on the capture differs from the calibration set's by more than this total variation distance, and sampling noise alone explains it in under 1% of random draws. Input ranges are held to spec.data.coverage.maxOutOfRange.")


class Rollout(Model):
    steps: list[RolloutStep] = Field(
        default_factory=lambda: [RolloutStep(weight=0, mirror=100, min_requests=0), RolloutStep(weight=10, mirror=10),
                                 RolloutStep(weight=50, mirror=10), RolloutStep(weight=100)],
        description="Default: a shadow step (every request mirrored to the canary, answers compared, none served from it), then 10% and 50% with 10% mirrored, then 100%.")
    analysis: Analysis = Field(default_factory=Analysis)
    router: str = Field("triton", pattern=r"^(triton|gateway)$", description="triton: a router model inside Triton; gateway: a Gateway API HTTPRoute.")
    gateway: GatewayRoute = Field(default_factory=GatewayRoute, description="Where the HTTPRoute points and attaches (router: gateway).")
    capture: Capture = Field(default_factory=Capture, description="Production samples: a capped sample of live inputs kept as a Lathe .npz data set, compared with the calibration set (router: triton).")

    @model_validator(mode="after")
    def _gateway_defaults(self):
        # A Gateway cannot compare answers: its default steps do not mirror (10%, 50%, 100%).
        if self.router == "gateway" and "steps" not in self.model_fields_set:
            self.steps = [RolloutStep(weight=10), RolloutStep(weight=50), RolloutStep(weight=100)]
        return self


class S3Storage(Model):
    secret_ref: str = Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="A Secret in the resource's namespace with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optional: AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION, ca.crt); mounted into the worker as environment, never shown in status.")
    endpoint: str | None = Field(None, pattern=r"^https?://[^/\s]+/?$", description="S3-compatible endpoint (MinIO, Ceph, ...), e.g. http://minio.storage:9000; default: the Secret's AWS_ENDPOINT_URL, else AWS.")
    region: str | None = Field(None, max_length=64, description="Default: the Secret's AWS_REGION, else us-east-1.")


class GCSStorage(Model):
    secret_ref: str = Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="A Secret in the resource's namespace with service-account.json (a service-account JSON key; optional: ca.crt); mounted into the worker as environment, never shown in status.")
    endpoint: str | None = Field(None, pattern=r"^https?://[^/\s]+/?$", description="Another Cloud Storage endpoint (an emulator, a private endpoint), e.g. http://gcs.storage:4443; default: the key's gcs_base_url, else Google.")


class AzureStorage(Model):
    secret_ref: str = Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="A Secret in the resource's namespace with AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN (optional: ca.crt); mounted into the worker as environment, never shown in status.")
    endpoint: str | None = Field(None, pattern=r"^https?://[^/\s]+(/[A-Za-z0-9]+)?/?$", description="Blob service endpoint (Azurite: http://azurite:10000/<account>); default https://<account>.blob.core.windows.net.")


class Storage(Model):
    s3: S3Storage | None = Field(None, description="Credentials and endpoint for every s3:// location of this resource.")
    gcs: GCSStorage | None = Field(None, description="Credentials and endpoint for every gs://bucket/path location of this resource.")
    azure: AzureStorage | None = Field(None, description="Credentials and endpoint for every az://container/path location (Azure Blob Storage) of this resource.")


class Publish(Model):
    repository: Location = Field(description="Triton model repository: a path, pvc://claim/path, s3://bucket/prefix (needs spec.storage.s3) or gs://bucket/prefix (needs spec.storage.gcs); az:// is refused: Triton reaches only *.blob.core.windows.net (docs/storage.md).")
    model_name: FolderName = Field(description="The model's folder in the repository (and its name in Triton).")
    flavour: str = Field("auto", pattern=r"^(auto|onnxruntime|python|tensorrt|openvino|genai)$", description="Triton backend; auto picks from the winner's runtime (genai for onnxruntime-genai: a decoupled Python-backend model that streams tokens).")
    triton_url: str | None = Field(None, description="Triton HTTP endpoint (host:port); without it nothing is loaded or rolled out.")
    metrics_url: str | None = Field(None, description="Triton's Prometheus endpoint; default http://<tritonUrl host>:8002/metrics.")
    max_batch_size: int = Field(8, ge=0)
    dynamic_batching: bool = True
    instances: int = Field(1, ge=1)
    rollout: Rollout | None = None


class Builders(Model):
    """Where the build Jobs of a search with parallelism > 1 run: they may differ from the benchmark node (build on
    big CPU nodes, time on the target)."""

    resources: Resources = Field(default_factory=Resources, description="Requests and limits of each build Job (merged over the operator's CPU defaults); default: the target's.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels a build Job needs; default: the target's nodeSelector.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints a build Job tolerates; default: the target's tolerations.")


class Search(Model):
    """How the candidate search is spread over the cluster (docs/scaling.md)."""

    parallelism: int = Field(1, ge=1, le=32, description="Build Jobs the candidates are split into (longest expected first: the passes that train before the rest); each builds and validates its share and hands it over through spec.artifacts, then one benchmark Job on the target times the baseline and every passed candidate together in interleaved rounds. 1: one Job does everything. More than 1 needs spec.artifacts.")
    builders: Builders | None = Field(None, description="Resources, nodeSelector and tolerations of the build Jobs (parallelism > 1); the benchmark Job always runs where spec.target says.")


class ModelOptimizationSpec(Model):
    model_config = ConfigDict(json_schema_extra=cel(
        ("!has(self.target) || !has(self.target.runtimes) || (has(self.target.device) && self.target.device == 'gpu')"
         " || !self.target.runtimes.exists(r, r == 'tensorrt')",
         "tensorrt needs target.device gpu"),
        ("!has(self.task) || !has(self.task.type) || self.task.type != 'causal-lm' || !has(self.target)"
         " || !has(self.target.device) || self.target.device == 'cpu'",
         "task causal-lm runs on target.device cpu only: the GPU path (TensorRT-LLM engines, FP8/NVFP4) is not "
         "available in Lathe"),
    ))
    model: ModelSource
    task: Task = Field(default_factory=Task)
    data: Data
    target: Target = Field(default_factory=Target)
    candidates: list[Candidate] = Field(default_factory=list, description="Default: a search set chosen for the target and model.")
    search: Search = Field(default_factory=Search, description="Spread the search over several build Jobs (parallelism) and say where they run (builders).")
    budget: Budget = Field(default_factory=Budget)
    objective: Objective = Field(Objective.latency, description="What the winner is picked by among candidates within budget: latency (task causal-lm: time per generated token, i.e. decode tokens/s), throughput, size, or first-token (task causal-lm: time to first token).")
    tensorrt: TensorRTOptions | None = None
    publish: Publish | None = None
    storage: Storage | None = None
    artifacts: Location | None = Field(None, description="Where the worker keeps copies of result.json, details.json and report.html (a path, pvc://claim/path or s3://bucket/prefix; a Job writes under <namespace>/<name>/generation-<n>/). Default: none beside the published version's copy and the operator's report ConfigMap.")


def parse_spec(obj: dict[str, Any]) -> ModelOptimizationSpec:
    return ModelOptimizationSpec.model_validate(obj)


def metric_of(spec: ModelOptimizationSpec) -> Metric:
    return Metric(spec.task.metric or DEFAULT_METRIC[TaskType(spec.task.type)])


def runtimes_of(spec: ModelOptimizationSpec) -> list[Runtime]:
    if spec.target.runtimes:
        return [Runtime(r) for r in spec.target.runtimes]
    if spec.task.type == TaskType.causal_lm:
        return [Runtime.onnxruntime_genai]
    if spec.target.device == Device.gpu:
        return [Runtime.tensorrt]
    return [Runtime.onnxruntime, Runtime.openvino]
