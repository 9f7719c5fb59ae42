"""The operator's side of a production capture, one call per rollout tick (the executor's edge):
drain `<model>_capture` into part files, and when the rollout is over merge them into the data set,
compare it with the canary's calibration profile and unload the queue. All progress is in
status.rollout.capture; part names are unique, so a tick repeated after a restart loses nothing."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np

from lathe.api.status import CaptureStatus, RolloutStatus
from lathe.serving.triton import TritonControl, TritonError

from . import capture as cap
from .router import CaptureParams, capture_name

log = logging.getLogger("lathe.rollout.capture")
TAKE_BYTES = 8 << 20  # per drain call: the operator's answers stay small
DONE = ("Promoted", "RolledBack", "Failed")


@dataclass
class CaptureRun:
    params: CaptureParams
    store: object  # capture_store.CaptureStore
    classification: bool
    max_out_of_range: float
    max_class_shift: float

    def tick(self, triton: TritonControl, model: str, rollout: RolloutStatus, canary: int | None) -> RolloutStatus:
        """`canary`: the version rolled out (the status forgets it once promoted)."""
        if rollout.capture is None and rollout.stable_version is None:
            return rollout  # a first version: no stable one whose answers to sample
        c = rollout.capture or CaptureStatus(uri=self.store.uri)
        if c.state != "Capturing":
            return rollout
        c = c.model_copy(deep=True)
        try:
            self._drain(triton, model, c)
            if rollout.state in DONE:
                self._finish(triton, model, canary, c)
            c.reason = ""
        except (TritonError, OSError, ValueError) as e:  # StorageError is a ValueError: retried next tick
            c.reason = f"capture: {e}"[:500]
            log.warning("%s: %s", model, c.reason)
            if rollout.state in DONE:
                c.state = "Failed"
        return rollout.model_copy(update={"capture": c})

    def _drain(self, triton: TritonControl, model: str, c: CaptureStatus) -> None:
        name = capture_name(model)
        if not triton.ready_versions(name):
            return  # not loaded yet (no step has routed stable traffic with capture on)
        for _ in range(64):  # bounded per tick; the queue itself is capped
            got = triton.infer(name, {"TAKE": np.array([TAKE_BYTES], dtype=np.int64)}, ["BLOB", "INFO"])
            info = json.loads(bytes(got["INFO"].reshape(-1)[0]))
            c.dropped = max(c.dropped, int(info["dropped_rows"]))
            blobs = [bytes(b) for b in got["BLOB"].reshape(-1)]
            kept = []
            for blob in blobs:
                arrays = cap.decode(blob)
                rows = cap.rows_of(arrays)
                room = min(rows, self.params.max_rows - c.samples)
                if room <= 0 or c.bytes + len(blob) > self.params.max_bytes:
                    c.dropped += rows  # past the caps (a restarted Triton's queue starts counting again)
                    continue
                if room < rows:
                    arrays, c.dropped = {k: v[:room] for k, v in arrays.items()}, c.dropped + rows - room
                kept.append(arrays)
                c.samples += room
                c.requests += 1
                c.bytes += len(blob)
            for group in cap.group(kept):
                self.store.put(f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz", cap.encode(group))
                c.parts += 1
            if not int(info["queued"]):
                return

    def _finish(self, triton: TritonControl, model: str, canary: int | None, c: CaptureStatus) -> None:
        parts = self.store.names("part-")
        merged = cap.merge([cap.decode(self.store.get(n)) for n in parts])
        extra = {"model": model, "canary_version": canary, "parts": len(parts)}
        if merged.inputs:
            self.store.put("production.npz", cap.encode(merged.inputs))
            c.dataset = self.store.where("production.npz")
            if merged.answers is not None:
                self.store.put("answers.npz", cap.encode({"answers": merged.answers}))
            for i, other in enumerate(merged.others, start=2):  # rows of another shape: a data set each
                self.store.put(f"production-{i}.npz", cap.encode({k: v for k, v in other.items() if k != cap.ANSWER}))
            extra["other_shapes"] = [cap.rows_of(o) for o in merged.others]
        text = triton.files.read_text(f"{model}/{canary}/{cap.PROFILE_FILE}") if canary is not None else None
        prof = json.loads(text) if text else None
        c.report = cap.compare(prof, merged.inputs, merged.answers, max_out_of_range=self.max_out_of_range,
                               max_class_shift=self.max_class_shift, classification=self.classification)
        self.store.put("report.json", cap.report_json(c.report, extra).encode())
        for n in parts:  # everything is in the merged files now
            self.store.delete(n)
        c.parts, c.state = 0, "Complete"
        try:
            triton.unload(capture_name(model))
        except TritonError as e:  # the capture is written; an idle queue left loaded costs only memory
            log.warning("%s: could not unload %s: %s", model, capture_name(model), e)

