"""A production capture written to S3 (rollout/capture_store.py) on the real S3 server: parts listed by
prefix, the merged data set read back as a Lathe data set, parts deleted after the merge."""

from __future__ import annotations

import numpy as np

from lathe.rollout.capture import decode, encode, merge
from lathe.rollout.capture_store import CaptureStore
from lathe.worker import data as datamod


def test_capture_parts_and_data_set_on_s3(s3_client, s3_bucket, tmp_path):
    store = CaptureStore(f"s3://{s3_bucket}/captures/digits/generation-2/capture", s3_client)
    rows = [np.full((2, 64), i, np.float32) for i in range(3)]
    for i, x in enumerate(rows):
        store.put(f"part-{i:05d}.npz", encode({"input": x, "__lathe_answer__": np.eye(10, dtype=np.float32)[[i, i]]}))
    store.put("report.json", b"{}")
    parts = store.names("part-")
    assert parts == ["part-00000.npz", "part-00001.npz", "part-00002.npz"]
    merged = merge([decode(store.get(n)) for n in parts])
    store.put("production.npz", encode(merged.inputs))
    for n in parts:
        store.delete(n)
    assert store.names("part-") == [] and store.names("production") == ["production.npz"]
    local = tmp_path / "production.npz"
    local.write_bytes(store.get("production.npz"))
    ds = datamod.load(local, [datamod.InputMeta("input", [None, 64], "float32")], "calibration")
    assert len(ds) == 6 and np.array_equal(ds.feeds["input"], np.concatenate(rows))
    assert store.where("production.npz") == f"s3://{s3_bucket}/captures/digits/generation-2/capture/production.npz"
