"""Lathe production capture: a Triton python-backend model (`<model>_capture`) holding the request inputs
the router sampled, until the operator takes them.

Why a model of its own: the router is reloaded at every rollout step; this queue is loaded once per
rollout and emptied by the operator every tick, so a reload loses nothing and memory stays bounded.

Inputs (both optional, one per request):
  RECORD  BYTES [n]  .npz blobs from the router: the request's inputs and stable's answer
  TAKE    INT64 [1]  the most bytes to hand over in this answer (the operator's drain)
Outputs:
  BLOB    BYTES [k]  the blobs taken (RECORD requests get none)
  INFO    BYTES [1]  JSON: kept_rows, kept_requests, dropped_rows, queued (blobs still held)
Parameters: max_rows, max_bytes: the most kept since load; rows past them are dropped and counted.
"""

import io
import json
from collections import deque

import numpy as np
import triton_python_backend_utils as pb_utils


def _rows(blob):
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return min((len(z[k]) for k in z.files), default=0)


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        self.max_rows = int(params.get("max_rows") or 1000)
        self.max_bytes = int(params.get("max_bytes") or 64 << 20)
        self.queue = deque()
        self.kept_rows = self.kept_requests = self.kept_bytes = self.dropped_rows = 0

    def _record(self, blob):
        try:
            rows = _rows(blob)
        except (ValueError, OSError, EOFError) as e:
            pb_utils.Logger.log_warn(f"lathe capture: unreadable blob dropped: {e}")
            return
        if self.kept_rows + rows > self.max_rows or self.kept_bytes + len(blob) > self.max_bytes:
            self.dropped_rows += rows
            return
        self.queue.append(blob)
        self.kept_rows += rows
        self.kept_requests += 1
        self.kept_bytes += len(blob)

    def _take(self, limit):
        out, size = [], 0
        while self.queue and (not out or size + len(self.queue[0]) <= limit):
            b = self.queue.popleft()
            out.append(b)
            size += len(b)
        return out

    def _info(self):
        return json.dumps({"kept_rows": self.kept_rows, "kept_requests": self.kept_requests,
                           "dropped_rows": self.dropped_rows, "queued": len(self.queue)})

    def execute(self, requests):
        responses = []
        for r in requests:
            rec = pb_utils.get_input_tensor_by_name(r, "RECORD")
            take = pb_utils.get_input_tensor_by_name(r, "TAKE")
            blobs = []
            if rec is not None:
                for b in rec.as_numpy().reshape(-1):
                    self._record(bytes(b))
            if take is not None:
                blobs = self._take(int(take.as_numpy().reshape(-1)[0]))
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("BLOB", np.array(blobs, dtype=np.object_)),
                pb_utils.Tensor("INFO", np.array([self._info().encode()], dtype=np.object_))]))
        return responses
