"""Fixtures shared by the control-plane tests."""

import uuid

import pytest
from kubernetes import client


@pytest.fixture(scope="module")
def namespace(k8s_client):
    """A fresh namespace per test module."""
    core = client.CoreV1Api(k8s_client)
    name = f"cp-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
