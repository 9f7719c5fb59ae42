"""The GCS and Azure emulators' fixtures leave nothing behind: a server stops with its whole process group,
and a start that fails (binary missing, port taken) raises clearly with no process left."""

from __future__ import annotations

import hashlib
import socket

import pytest

from e2e.azurite.fixture import AzuriteError, AzuriteServer
from e2e.azurite.fixture import pinned_version as azurite_version
from e2e.gcs.fixture import GCSServer, GCSServerError, find_binary, pinned_version
from tests.s3.test_s3_server import _group_members, _processes_mentioning


@pytest.mark.parametrize("server_cls", [GCSServer, AzuriteServer], ids=["gcs", "azurite"])
def test_start_and_stop_leave_nothing(server_cls, tmp_path):
    server = server_cls(tmp_path / "srv")
    with server:
        pgid = server.proc.pid
        assert server.alive() and _group_members(pgid)
        assert server.make_bucket("lathe-own") == "lathe-own"
    assert not server.alive() and _group_members(pgid) == []
    assert _processes_mentioning(str(tmp_path / "srv")) == []


@pytest.mark.parametrize("server_cls, error", [(GCSServer, GCSServerError), (AzuriteServer, AzuriteError)],
                         ids=["gcs", "azurite"])
def test_port_already_taken_fails_clearly_and_leaves_no_process(server_cls, error, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = server_cls(tmp_path / "srv", port=port, start_timeout=30)
        with pytest.raises(error, match=r"cannot start the .* test server"):
            server.start()
    assert server.proc is None and not server.alive()
    assert _processes_mentioning(str(tmp_path / "srv")) == []


def test_missing_programs_name_their_build_commands(tmp_path):
    with pytest.raises(GCSServerError, match=r"e2e/gcs/build\.sh"):
        GCSServer(tmp_path / "g", binary=tmp_path / "nope").start()
    with pytest.raises(AzuriteError, match=r"e2e/azurite/install\.sh"):
        AzuriteServer(tmp_path / "a", entry=tmp_path / "nope.js").start()


def test_the_pinned_builds_are_in_the_cache():
    binary = find_binary()
    info = dict(line.split("=", 1) for line in (binary.parent / "BUILDINFO").read_text().splitlines())
    assert info["version"] == pinned_version() == "v1.56.1" and (binary.parent / ".complete").exists()
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == info["sha256"]
    assert azurite_version() == "3.37.0"
