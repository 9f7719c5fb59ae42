"""Shared pytest setup.

The Kubernetes control-plane fixtures live in e2e/controlplane/fixture.py (build the binaries once
with `bash e2e/controlplane/build.sh`):

* ``control_plane`` (session): a started ControlPlane (etcd + kube-apiserver + kube-controller-manager)
  with ``.kubeconfig``, ``.url``, ``.api_client()``, ``.token_client(token)``, ``.apply_yaml(...)``;
  the repo's crds/*.yaml are installed and Established;
* ``kubeconfig`` (session): the admin kubeconfig path, exported as KUBECONFIG (kopf logs in with it);
* ``k8s_client`` (session): a configured ``kubernetes.client.ApiClient``;
* ``node_agent`` (session): e2e/nodeagent/agent.py running pods as local processes;
* ``s3_server`` (session), ``s3_bucket``, ``s3_client``: a real S3 server (versitygw, built by
  `bash e2e/s3/build.sh`, see e2e/s3/fixture.py);
* ``gcs_server``, ``azurite_server`` (session): fake-gcs-server and Azurite (`bash e2e/gcs/build.sh`,
  `bash e2e/azurite/install.sh`), and ``store``: one test run against each of S3, GCS and Azure
  (e2e/stores/fixtures.py).
* ``tiny_llm`` (session): a tiny causal LM built by the onnxruntime-genai model builder (e2e/triton/fixtures.py).
* ``digits`` (session): the digits CNN trained once (lathe.worker.samples.make_digits), with its
  calibration, validation and training sets.

A failing test gets the tails of the component logs appended to its report.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from e2e.controlplane.fixture import (  # noqa: E402,F401
    control_plane,
    k8s_client,
    kubeconfig,
    node_agent,
    pytest_runtest_makereport,
)
from e2e.s3.fixture import s3_bucket, s3_client, s3_server  # noqa: E402,F401
from e2e.stores.fixtures import azurite_server, gcs_server, store  # noqa: E402,F401
from e2e.triton.fixtures import tiny_llm  # noqa: E402,F401 - here, so tests/serving and tests/rollout share one build


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    from lathe.worker.samples import make_digits

    s = make_digits(tmp_path_factory.mktemp("digits"))
    assert s["top1"] > 0.97, s["top1"]
    return s
