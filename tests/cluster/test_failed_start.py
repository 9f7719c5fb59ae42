"""A node whose start fails undoes what it did: the machine is left as it was found.

(This module sorts before the others of tests/cluster, so it runs before their package fixture
holds the one real node this machine can have; were the order to change, the lock error would
fail these tests, not pass them.)"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from e2e.controlplane.fixture import ControlPlane
from e2e.node.fixture import Node, NodeError, machine_state, node_control_plane_kwargs


@contextlib.contextmanager
def failing_start(tmp_path: Path, **control_plane):
    """A control plane for a node whose start is expected to fail; after it, the machine must be
    as it was before."""
    cp = ControlPlane(tmp_path / "cp", **dict(node_control_plane_kwargs(), **control_plane))
    workdir = tmp_path / "node"
    workdir.mkdir()
    before = machine_state(workdir)
    try:
        cp.start()
        yield cp, workdir
    finally:
        cp.stop()
    assert machine_state(workdir) == before


@pytest.fixture
def short_path(tmp_path_factory) -> Path:
    """A work folder short enough for containerd's socket wherever pytest's base folder is: tmp_path carries the
    test's name, and a longer base (pytest-xdist's per-worker folder, tried for issue 21) pushed it past."""
    return tmp_path_factory.mktemp("failed-start")


def test_missing_image_archive_fails_and_leaves_nothing(short_path):
    with failing_start(short_path) as (cp, workdir):
        node = Node(cp, workdir, images={"lathe.dev/missing:1": short_path / "no-such-image.tar"})
        with pytest.raises(FileNotFoundError, match="no-such-image.tar"):
            node.start()


def test_node_that_never_gets_ready_is_torn_down(short_path):
    # Without the node-lifecycle controller the not-ready taint is never lifted: the kubelet has
    # run (sysctls set, cgroups made, sandboxes possible) when the start gives up.
    with failing_start(short_path, extra_controllers=("persistentvolume-binder-controller",)) as (cp, workdir):
        node = Node(cp, workdir, start_timeout=8)
        with pytest.raises(NodeError, match="kubelet not ready after 8"):
            node.start()
        log = Path(node.logs["kubelet"]).read_text()
        assert "Successfully registered node" in log or "Attempting to register node" in log, log[-2000:]


def test_a_work_folder_too_long_for_containerds_socket_is_refused_before_anything_starts(tmp_path):
    cp = ControlPlane(tmp_path / "cp", **node_control_plane_kwargs())  # never started: the check comes first
    with pytest.raises(NodeError, match="too long for containerd's socket"):
        Node(cp, tmp_path / ("n" * 80))
