"""The optimization worker: what a Job pod runs (and `lathe run` runs locally).

Importing this package is cheap: torch, onnxruntime and openvino are only imported by the
modules that run models (`pipeline`, `intake`, `backends.*`, the passes' `run`)."""
