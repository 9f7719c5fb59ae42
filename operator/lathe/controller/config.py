"""Operator configuration: what the cluster admin sets (Helm values -> env), not the user."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OperatorConfig:
    worker_image: str = "ghcr.io/lathe-dev/lathe-worker:0.1.0"
    worker_gpu_image: str = "ghcr.io/lathe-dev/lathe-worker-gpu:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    worker_command: tuple[str, ...] = ("lathe", "worker")
    # the Job that publishes the architectures' engines as one version (spec.target.gpu.architectures)
    publish_command: tuple[str, ...] = ("python", "-m", "lathe.serving.architectures")
    cpu_resources: dict = field(default_factory=lambda: {"requests": {"cpu": "2", "memory": "4Gi"},
                                                          "limits": {"memory": "8Gi"}})
    pvc_root: str = "/mnt/pvc"
    service_account: str = ""
    max_attempts: int = 3
    backoff_seconds: float = 10.0
    active_deadline_seconds: int = 6 * 3600
    rollout_interval: float = 5.0
    resync_interval: float = 10.0  # retry of a pass that failed before it wrote status
    progress_interval: float = 15.0  # passes refreshing a split search's Jobs (phase, node, progress)
    metrics_port: int = 9090
    bench_seconds: float = 30.0  # the worker's benchmark budget (LATHE_BENCH_SECONDS in its pod)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        kw: dict = {}
        for name, f in cls.__dataclass_fields__.items():
            raw = env.get("LATHE_" + name.upper())
            if raw is None:
                continue
            if f.type in ("int",):
                kw[name] = int(raw)
            elif f.type in ("float",):
                kw[name] = float(raw)
            elif f.type == "dict":
                kw[name] = json.loads(raw)
            elif name in ("worker_command", "publish_command"):
                kw[name] = tuple(raw.split())
            else:
                kw[name] = raw
        return cls(**kw)
