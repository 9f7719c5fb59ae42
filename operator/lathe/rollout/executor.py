"""Applies the pure machine's actions to Triton and a router; one `step()` per operator timer tick.

    ex = RolloutExecutor(TritonControl(url, repository, metrics_url=...), model_name, router="triton")
    status = rollout.start(stable_version, canary_version)          # once, when version N+1 is published
    status, actions = ex.step(spec.publish.rollout, status)         # every tick; persist status each time

The executor holds no state of its own: everything comes from the status (and Triton / the
repository), so a restarted operator resumes where the persisted status says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from lathe.api.spec import Rollout
from lathe.api.status import RolloutStatus, RolloutStepStatus
from lathe.serving.triton import TritonControl, TritonLoadError, TritonUnavailable

from . import metrics as prom
from .capture_run import CaptureRun
from .machine import Action, Observation, Route, Serve, _iso, advance, now_utc
from .router import Compare, GatewayRouter, TritonRouter


class RolloutExecutor:
    def __init__(self, triton: TritonControl, model: str, *, router: str = "triton",
                 apply_manifest: Callable[[dict], None] | None = None, gateway_options: dict | None = None,
                 router_instances: int = 1, max_step_seconds: float | None = None, compare: Compare | None = None,
                 capture: CaptureRun | None = None):
        self.triton, self.model = triton, model
        self.capture = capture
        self.max_step_seconds = max_step_seconds
        if router == "gateway":
            if apply_manifest is None:
                raise ValueError("router=gateway needs apply_manifest (the operator's Kubernetes apply)")
            self.router = GatewayRouter(model, apply_manifest, **(gateway_options or {}))
        else:
            self.router = TritonRouter(triton, model, instances=router_instances, compare=compare,
                                       capture=capture.params if capture else None)
        self.timings: dict[str, float] = {}

    def observe(self) -> Observation:
        try:
            return prom.observe(self.triton.metrics_text(), self.model)
        except TritonUnavailable as e:
            return Observation(error=str(e))

    def apply(self, actions: list[Action], stable: int | None = None) -> None:
        """`stable`: the version whose answers a capture samples (none: nothing captured)."""
        for a in actions:
            if isinstance(a, Serve):
                self.triton.serve(self.model, list(a.versions))
            elif isinstance(a, Route):
                self.router.set_weights(a.as_dict, a.mirror, a.pair, capture_version=stable)
            else:  # pragma: no cover
                raise TypeError(a)

    def step(self, spec: Rollout, status: RolloutStatus, now: datetime | None = None
             ) -> tuple[RolloutStatus, list[Action]]:
        """Observe → decide → apply, then drain the capture (when on; finished when the rollout is over).
        Triton unreachable: status unchanged but for the reason (retry next tick). An action Triton
        refuses (e.g. the canary fails to load): traffic back to stable, state Failed."""
        new, actions = self._step(spec, status, now or now_utc())
        if self.capture is not None:
            new = self.capture.tick(self.triton, self.model, new, status.canary_version)
        return new, actions

    def _step(self, spec: Rollout, status: RolloutStatus, now: datetime) -> tuple[RolloutStatus, list[Action]]:
        t0 = time.perf_counter()
        obs = self.observe()
        t1 = time.perf_counter()
        new, actions = advance(spec, status, obs, now, max_step_seconds=self.max_step_seconds)
        t2 = time.perf_counter()
        try:
            self.apply(actions, stable=status.stable_version)
        except TritonUnavailable as e:
            s = status.model_copy(deep=True)
            s.reason = f"Triton unreachable, will retry: {e}"
            return s, []
        except TritonLoadError as e:
            s = new.model_copy(deep=True)
            stable = status.stable_version
            s.state, s.canary_version = "Failed", None
            s.reason = f"could not apply {actions}: {e}"
            if stable is not None:
                try:
                    self.apply([Route(((stable, 100),)), Serve((stable,))])
                    s.weights = {str(stable): 100}
                    s.stable_version = stable
                    s.reason += f"; traffic back on version {stable}"
                except (TritonLoadError, TritonUnavailable) as e2:
                    s.reason += f"; restoring version {stable} failed too: {e2}"
            s.history.append(RolloutStepStatus(step=s.step, weight=0, decision="Failed", reason=str(e)[:500],
                                               time=_iso(now)))
            return s, actions
        t3 = time.perf_counter()
        self.timings = {"observe_s": t1 - t0, "decide_s": t2 - t1, "apply_s": t3 - t2}
        return new, actions
