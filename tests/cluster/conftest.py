"""A cluster as a cluster runs: its own control plane, a real node (containerd + kubelet +
kube-scheduler, e2e/node/fixture.py) with Lathe's built images imported (images/build.sh)."""

from __future__ import annotations

import types

import pytest

from e2e.controlplane.fixture import ControlPlane, ControlPlaneError
from e2e.node.fixture import Node, NodeError, machine_state, node_control_plane_kwargs


@pytest.fixture(scope="package")
def real_cluster(tmp_path_factory):
    from e2e.images.built import built_images

    images = built_images()  # fails naming images/build.sh when an image is not built
    cp = ControlPlane(tmp_path_factory.mktemp("cluster-cp"), **node_control_plane_kwargs())
    workdir = tmp_path_factory.mktemp("cluster-node")
    before = machine_state(workdir)
    node = None
    try:
        cp.start()
        node = Node(cp, workdir, images=images).start()
        print(f"real node ready: control plane {cp.ready_seconds:.1f}s, {node.timings}, RSS MiB {node.rss_mib()}")
        yield types.SimpleNamespace(cp=cp, node=node, images=images)
    except (ControlPlaneError, NodeError) as e:
        pytest.fail(f"cannot start the cluster: {e}", pytrace=False)
    finally:
        try:
            if node is not None:
                node.stop()
        finally:
            cp.stop()
        # The node leaves the machine as it found it (sysctls, cgroups, mounts, bridge, daemons).
        after = machine_state(workdir)
        assert after == before, f"the node changed this machine: before {before}, after {after}"
