"""Errors the worker raises. `kind` tells the CLI and the controller apart a user's mistake
(bad model, bad data, bad spec: exit code 2, no retry) from a crash (exit code 1, retry)."""

from __future__ import annotations


class WorkerError(Exception):
    """A failure at a named stage (intake, data, calibration, pass:<name>, build, validate, benchmark, report)."""

    kind = "Crash"
    exit_code = 1

    def __init__(self, stage: str, message: str, kind: str | None = None):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message
        if kind:  # a finer reason for status (StorageNotFound, StorageAccessDenied, ...)
            self.kind = kind

    def to_dict(self) -> dict[str, str]:
        return {"error": self.message, "stage": self.stage, "kind": self.kind}


class InvalidInput(WorkerError):
    """The user's model, data or spec is wrong; retrying will not help."""

    kind = "InvalidInput"
    exit_code = 2


class CoverageError(InvalidInput):
    """The calibration set does not represent the validation set (too few samples, missing classes)."""

    def __init__(self, stage: str, message: str, missing_classes: list | None = None):
        super().__init__(stage, message)
        self.missing_classes = list(missing_classes or [])
