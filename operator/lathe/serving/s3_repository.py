"""The names the first S3-only publisher had (tests and callers that still use them); the writer is
serving/object_repository.py, for every object store."""

from __future__ import annotations

from .object_repository import CLAIMS, STAGING, model_prefix, object_meta, object_versions

s3_versions = object_versions
s3_meta = object_meta

__all__ = ["CLAIMS", "STAGING", "model_prefix", "s3_meta", "s3_versions"]
