"""The S3 tests' fixtures: ``s3_server``, ``s3_bucket`` and ``s3_client`` come from tests/conftest.py
(e2e/s3/fixture.py); the digits models and Triton from e2e/triton/fixtures.py."""

from e2e.triton.fixtures import digits_models  # noqa: F401
