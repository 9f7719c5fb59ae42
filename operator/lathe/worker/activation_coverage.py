"""Do the calibrated ranges cover what the model meets? For each tensor a static INT8 model quantizes,
the share of validation activations (FP32 model, same inputs) outside the range the quantizer was given:
values out there are clipped to the range's end. Checked on activations, not only on the model inputs
(data.coverage), because a layer deep in the network can saturate while every input is in range."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

SAMPLES = 256  # validation rows run through the FP32 model; enough for shares of 1e-3


def activation_coverage(src: Path, cache: Path, validation, samples: int = SAMPLES, threads: int = 0
                        ) -> dict[str, float]:
    """{tensor: share of its validation values outside its calibrated range}, worst first."""
    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415
    from onnxruntime.quantization.calibrate import load_tensors_data  # noqa: PLC0415

    ranges = {k: (float(np.ravel(v.range_value[0])[0]), float(np.ravel(v.range_value[1])[0]))
              for k, v in load_tensors_data(cache).data.items()}
    m = onnx.load(str(src))
    have = {o.name for o in m.graph.output}
    inputs = {i.name for i in m.graph.input}
    produced = {o for n in m.graph.node for o in n.output}
    names = [t for t in ranges if t in produced or t in inputs]
    for t in names:
        if t not in have and t not in inputs:
            m.graph.output.append(onnx.ValueInfoProto(name=t))
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="lathe-actcov-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(m, str(path))
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outputs = [t for t in names if t not in inputs]
    outside = dict.fromkeys(names, 0)
    total = dict.fromkeys(names, 0)
    for feeds in validation.head(samples).batches(32):
        got = dict(zip(outputs, sess.run(outputs, feeds), strict=True)) if outputs else {}
        got.update({t: feeds[t] for t in names if t in inputs})
        for t in names:
            a = np.asarray(got[t], dtype=np.float64)
            lo, hi = ranges[t]
            outside[t] += int(((a < lo) | (a > hi)).sum())
            total[t] += a.size
    share = {t: outside[t] / total[t] for t in names if total[t]}
    return dict(sorted(share.items(), key=lambda kv: -kv[1]))
