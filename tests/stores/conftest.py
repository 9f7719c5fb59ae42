"""The object-store tests' fixtures: ``store`` (parametrized over s3, gs, az), ``s3_server``,
``gcs_server`` and ``azurite_server`` come from tests/conftest.py (e2e/stores/fixtures.py); the digits
models and Triton from e2e/triton/fixtures.py."""

from e2e.triton.fixtures import digits_models  # noqa: F401
