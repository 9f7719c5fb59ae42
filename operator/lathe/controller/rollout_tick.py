"""The operator's side of a canary: one rollout step per timer pass.

The decision is the pure `lathe.rollout.machine.advance`; this module finds the stable version,
runs the executor against Triton and folds the rollout state into the resource's status. All
rollout state lives in status.rollout, so a restarted operator continues the same step."""

from __future__ import annotations

import logging
from typing import Any

from lathe.api.spec import ModelOptimizationSpec, Publish, Rollout, TaskType
from lathe.api.status import Phase, RolloutStatus
from lathe.rollout.agreement import compare_of, with_defaults
from lathe.rollout.capture_run import CaptureRun
from lathe.rollout.capture_store import CaptureStore
from lathe.rollout.executor import RolloutExecutor
from lathe.rollout.machine import start
from lathe.rollout.router import CaptureParams, RouteRefused, RouteUnavailable
from lathe.serving.triton import TritonControl, TritonError
from lathe.storage import StorageError

from .config import OperatorConfig
from .kube import api_message
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
            try:
                api.create_namespaced_custom_object(group, version, namespace, "httproutes", manifest)
            except ApiException as e:
                if e.status != 409:
                    raise
                api.patch_namespaced_custom_object(group, version, namespace, "httproutes", name, manifest)
        except ApiException as e:
            why = f"HTTPRoute {namespace}/{name}: {e.status} {api_message(e)}"
            if e.status == 404:
                raise RouteRefused(why + " (are the Gateway API CRDs installed?)") from e
            if e.status in (400, 403, 422):
                raise RouteRefused(why) from e
            raise RouteUnavailable(why) from e
        except OSError as e:  # connection refused, reset, timed out
            raise RouteUnavailable(f"HTTPRoute {namespace}/{name}: {e}") from e
    return apply


def gateway_options(rollout: Rollout, namespace: str) -> dict[str, Any]:
    """The HTTPRoute's place in the cluster, from the spec: it lives beside the resource."""
    g = rollout.gateway
    return {"namespace": namespace, "service": g.service, "port": g.port, "hostnames": g.hostnames or None,
            "parent_refs": [p.model_dump(by_alias=True, exclude_none=True) for p in g.parent_refs]}


def capture_uri(spec: ModelOptimizationSpec, namespace: str, name: str, generation: int) -> str | None:
    cap = spec.publish.rollout.capture if spec.publish and spec.publish.rollout else None
    if cap is None or not cap.enabled:
        return None
    if cap.uri:
        return cap.uri
    return f"{spec.artifacts.rstrip('/')}/{namespace}/{name}/generation-{generation}/capture"


def capture_run(spec: ModelOptimizationSpec, uri: str, s3_client) -> CaptureRun:
    cap = spec.publish.rollout.capture
    params = CaptureParams(cap.sample_percent, cap.max_samples, int(cap.max_mb * (1 << 20)), spec.task.output)
    return CaptureRun(params, CaptureStore(uri, s3_client), classification=spec.task.type == TaskType.classification,
                      max_out_of_range=spec.data.coverage.max_out_of_range, max_class_shift=cap.max_class_shift)


def executor_for(pub: Publish, namespace: str, spec: ModelOptimizationSpec | None = None,
                 capture_at: str | None = None) -> RolloutExecutor:
    """capture_at: where this rollout's production capture goes (None: no capture)."""
    rollout = pub.rollout or Rollout()
    from .storage_secret import client_for_location

    storage = spec.storage if spec else None
    repo_client = client_for_location(pub.repository, storage, namespace)
    triton = TritonControl(pub.triton_url, pub.repository, metrics_url=pub.metrics_url, s3_client=repo_client)
    capture = (capture_run(spec, capture_at, client_for_location(capture_at, storage, namespace))
               if capture_at and spec else None)
    return RolloutExecutor(triton, pub.model_name, router=rollout.router, apply_manifest=_apply_manifest(namespace),
                           gateway_options=gateway_options(rollout, namespace), compare=compare_of(rollout, spec),
                           capture=capture)


def tick(obj: dict[str, Any], world: World, result: Plan, config: OperatorConfig) -> float:
    st, now, gen = result.status, world.now, world.generation
    pub = world.spec.publish
    rollout = st.rollout or RolloutStatus(canary_version=st.published.version if st.published else None)
    meta = obj["metadata"]
    try:
        at = rollout.capture.uri if rollout.capture else capture_uri(world.spec, meta["namespace"], meta["name"], gen)
        ex = executor_for(pub, meta["namespace"], world.spec, at)
        if rollout.state == "Pending" and rollout.stable_version is None and rollout.canary_version is not None:
            served = [v for v in ex.triton.ready_versions(pub.model_name) if v != rollout.canary_version]
            rollout = start(max(served) if served else None, rollout.canary_version).model_copy(
                update={"publish": rollout.publish or pub})
        new, _ = ex.step(with_defaults(pub.rollout or Rollout(), world.spec), rollout, now)
    except TritonError as e:
        new = rollout.model_copy(update={"reason": f"Triton: {e}; retrying"})
    except StorageError as e:  # the repository on an object store refused or is gone: the step waits, nothing moved
        new = rollout.model_copy(update={"reason": f"model repository: {e}; retrying"})
    st.rollout = new
    st.message = new.reason
    _capture_events(rollout, new, result)
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


def _capture_events(before: RolloutStatus, after: RolloutStatus, result: Plan) -> None:
    c = after.capture
    if c is None or (before.capture is not None and before.capture.state == c.state):
        return
    if c.state == "Complete" and c.report is not None:
        if c.report.representative is False:
            result.actions.append(Event("Warning", "CaptureNotRepresentative",
                                        f"{c.samples} production samples at {c.dataset}: " + "; ".join(c.report.warnings)))
        else:
            result.actions.append(Event("Normal", "CaptureComplete", f"{c.samples} production samples at "
                                        f"{c.dataset or c.uri}" + (f" ({'; '.join(c.report.warnings)})"
                                                                   if c.report.warnings else "")))
    elif c.state == "Failed":
        result.actions.append(Event("Warning", "CaptureFailed", c.reason))


def abandon(namespace: str, name: str, spec: dict[str, Any], rollout: RolloutStatus) -> None:
    """The canary is over before its analysis (the resource was deleted, or its spec superseded):
    all traffic back to the stable version, the canary unloaded, on the Triton the canary started
    on (recorded in the rollout status; the resource's current spec only for canaries started
    before that was recorded). Best effort: a failure is logged, the status says what was meant."""
    from lathe.rollout.machine import Route, Serve

    if rollout.stable_version is None:
        return  # no traffic was moved yet
    try:
        try:  # the spec that superseded the canary may be invalid; the recorded publish still holds
            parsed = ModelOptimizationSpec.model_validate(spec)
        except ValueError:
            if rollout.publish is None:
                raise
            parsed = None
        pub = rollout.publish or parsed.publish
        if not pub or not pub.triton_url:
            return
        ex = executor_for(pub, namespace, parsed)
        ex.apply([Route(((rollout.stable_version, 100),)), Serve((rollout.stable_version,))])
        if rollout.capture is not None:  # its parts stay where they are; a next rollout starts a fresh queue
            from lathe.rollout.router import capture_name

            ex.triton.unload(capture_name(pub.model_name))
        log.info("%s/%s: canary %s abandoned, back on version %s at %s", namespace, name, rollout.canary_version,
                 rollout.stable_version, pub.triton_url)
    except (TritonError, ValueError) as e:  # StorageError is a ValueError
        log.warning("%s/%s: canary %s abandoned; could not restore version %s: %s", namespace, name,
                    rollout.canary_version, rollout.stable_version, e)
