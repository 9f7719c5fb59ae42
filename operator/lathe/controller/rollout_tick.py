"""The operator's side of a canary: one rollout step per timer pass.

The decision is the pure `lathe.rollout.machine.advance`; this module finds the stable version,
runs the executor against Triton and folds the rollout state into the resource's status. All
rollout state lives in status.rollout, so a restarted operator continues the same step."""

from __future__ import annotations

import logging
from typing import Any

from lathe.api.status import Phase, RolloutStatus
from lathe.rollout.executor import RolloutExecutor
from lathe.rollout.machine import start
from lathe.serving.triton import TritonControl, TritonError

from .config import OperatorConfig
from .plan import Event, Plan, World, set_condition

log = logging.getLogger("lathe.rollout")


def _apply_manifest(namespace: str):
    def apply(manifest: dict[str, Any]) -> None:
        from kubernetes.client.rest import ApiException

        from . import kube

        api = kube.custom()
        group, version = manifest["apiVersion"].split("/")
        name = manifest["metadata"]["name"]
        try:
            api.create_namespaced_custom_object(group, version, namespace, "httproutes", manifest)
        except ApiException as e:
            if e.status != 409:
                raise
            api.patch_namespaced_custom_object(group, version, namespace, "httproutes", name, manifest)
    return apply


def executor_for(world: World, namespace: str) -> RolloutExecutor:
    pub = world.spec.publish
    triton = TritonControl(pub.triton_url, pub.repository, metrics_url=pub.metrics_url)
    return RolloutExecutor(triton, pub.model_name, router=pub.rollout.router,
                           apply_manifest=_apply_manifest(namespace))


def tick(obj: dict[str, Any], world: World, result: Plan, config: OperatorConfig) -> float:
    st, now, gen = result.status, world.now, world.generation
    pub = world.spec.publish
    rollout = st.rollout or RolloutStatus(canary_version=st.published.version if st.published else None)
    try:
        ex = executor_for(world, obj["metadata"]["namespace"])
        if rollout.state == "Pending" and rollout.stable_version is None and rollout.canary_version is not None:
            served = [v for v in ex.triton.ready_versions(pub.model_name) if v != rollout.canary_version]
            rollout = start(max(served) if served else None, rollout.canary_version)
        new, _ = ex.step(pub.rollout, rollout, now)
    except TritonError as e:
        new = rollout.model_copy(update={"reason": f"Triton: {e}; retrying"})
    st.rollout = new
    st.message = new.reason
    if new.state == "Promoted":
        set_condition(st, "RolledOut", True, "Promoted", new.reason, now, gen)
        set_condition(st, "Ready", True, "Promoted", new.reason, now, gen)
        st.phase, st.stage = Phase.succeeded, "done"
        result.actions.append(Event("Normal", "Promoted", new.reason))
    elif new.state == "RolledBack":
        set_condition(st, "RolledOut", False, "RolledBack", new.reason, now, gen)
        set_condition(st, "Ready", False, "RolledBack", new.reason, now, gen)
        st.phase, st.stage = Phase.rolled_back, "rollout"
        result.actions.append(Event("Warning", "RolledBack", new.reason))
    elif new.state == "Failed":
        set_condition(st, "RolledOut", False, "RolloutFailed", new.reason, now, gen)
        set_condition(st, "Ready", False, "RolloutFailed", new.reason, now, gen)
        st.phase, st.stage = Phase.failed, "rollout"
        result.actions.append(Event("Warning", "RolloutFailed", new.reason))
    elif rollout.history and new.history and len(new.history) != len(rollout.history):
        result.actions.append(Event("Normal", "RolloutStep", new.reason))
    return config.rollout_interval


def abandon(namespace: str, name: str, spec: dict[str, Any], rollout: RolloutStatus) -> None:
    """The canary is over before its analysis (the resource was deleted, or its spec superseded):
    all traffic back to the stable version, the canary unloaded. Uses the publish settings of
    `spec`, the resource's current one. Best effort: a failure is logged, the status says what
    was meant to happen."""
    from lathe.api.spec import ModelOptimizationSpec
    from lathe.rollout.machine import Route, Serve

    if rollout.stable_version is None:
        return  # no traffic was moved yet
    try:
        s = ModelOptimizationSpec.model_validate(spec)
        if not s.publish or not s.publish.triton_url:
            return
        triton = TritonControl(s.publish.triton_url, s.publish.repository, metrics_url=s.publish.metrics_url)
        ex = RolloutExecutor(triton, s.publish.model_name, router=s.publish.rollout.router,
                             apply_manifest=_apply_manifest(namespace))
        ex.apply([Route(((rollout.stable_version, 100),)), Serve((rollout.stable_version,))])
        log.info("%s/%s: canary %s abandoned, back on version %s", namespace, name, rollout.canary_version,
                 rollout.stable_version)
    except (TritonError, ValueError) as e:
        log.warning("%s/%s: canary %s abandoned; could not restore version %s: %s", namespace, name,
                    rollout.canary_version, rollout.stable_version, e)
