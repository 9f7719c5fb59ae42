"""The S3 test server (versitygw v1.7.0, posix backend) and what is S3's own in Lathe's client against it
(the calls every store shares, get/put/list/multipart/copy, run in tests/stores/test_objects.py): each
failure with S3's error codes, the settings from the worker's AWS variables, and conditional writes. ``If-None-Match: *`` refuses to
overwrite when requests come one after another, but it is NOT an exclusive create under concurrency
(the posix backend checks the precondition before it reads the body), which is why the S3 publisher
claims version numbers by listing (serving/object_repository.py) instead.
"""

from __future__ import annotations

import hashlib
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from e2e.s3.fixture import S3Server, S3ServerError, find_binary, pinned_version
from lathe.storage import (
    StorageAccessDenied,
    StorageConflict,
    StorageNotFound,
    StorageUnreachable,
)
from lathe.storage.s3 import S3Client, S3Settings

MiB = 1024 * 1024


def test_each_failure_is_its_own_reason(s3_server, s3_client, s3_bucket):
    s3_client.put_bytes(s3_bucket, "k", b"x")
    wrong = S3Client(S3Settings(s3_server.access_key, "not-the-secret", s3_server.region, s3_server.endpoint))
    with pytest.raises(StorageAccessDenied, match="SignatureDoesNotMatch") as e:
        wrong.get_bytes(s3_bucket, "k")
    assert "not-the-secret" not in str(e.value)
    nobody = S3Client(S3Settings("NOSUCHKEY", "x", s3_server.region, s3_server.endpoint))
    # versitygw answers an unknown key with 404 XAdminUserNotFound (AWS: 403 InvalidAccessKeyId): still denied.
    with pytest.raises(StorageAccessDenied, match="XAdminUserNotFound"):
        nobody.get_bytes(s3_bucket, "k")
    with pytest.raises(StorageNotFound, match="NoSuchBucket"):
        s3_client.get_bytes("lathe-no-such-bucket", "k")
    with pytest.raises(StorageNotFound):
        s3_client.check_bucket("lathe-no-such-bucket")
    with pytest.raises(StorageNotFound, match="NoSuchKey"):  # HEAD has no body: a listing says which
        s3_client.head(s3_bucket, "no/such/key")
    with pytest.raises(StorageNotFound, match="NoSuchBucket"):
        s3_client.head("lathe-no-such-bucket", "k")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    down = S3Client(S3Settings("a", "b", "us-east-1", f"http://127.0.0.1:{port}"), retries=0)
    with pytest.raises(StorageUnreachable, match=f"127.0.0.1:{port} unreachable"):
        down.head(s3_bucket, "k")
    with pytest.raises(StorageAccessDenied, match="spec.storage.s3.secretRef"):
        S3Settings.from_env({})


def test_unsigned_request_is_access_denied(s3_server, s3_bucket):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{s3_server.endpoint}/{s3_bucket}/k", timeout=10)
    assert e.value.code == 403 and b"<Code>AccessDenied</Code>" in e.value.read()


def test_if_none_match_refuses_to_overwrite_one_after_another(s3_client, s3_bucket):
    s3_client.put_bytes(s3_bucket, "repo/m/1/model.py", b"first", if_none_match=True)
    with pytest.raises(StorageConflict):
        s3_client.put_bytes(s3_bucket, "repo/m/1/model.py", b"second", if_none_match=True)
    assert s3_client.get_bytes(s3_bucket, "repo/m/1/model.py") == b"first"


def test_racing_if_none_match_puts_leave_one_whole_object(s3_server, s3_bucket, record_property):
    """Concurrent create-if-absent: at least one wins and the object is one writer's whole body; the
    number of winners is recorded (versitygw lets more than one win: not an exclusive lock)."""
    writers, trials = 6, 4
    winners_per_trial = []
    for trial in range(trials):
        key, wins, refused, barrier = f"race/{trial}", [], [], threading.Barrier(writers)
        bodies = [bytes([i]) * (256 * 1024) for i in range(writers)]

        def put(i, key=key, wins=wins, refused=refused, barrier=barrier, bodies=bodies):
            client = S3Client(S3Settings(s3_server.access_key, s3_server.secret_key, s3_server.region,
                                         s3_server.endpoint))
            barrier.wait(10)
            try:
                client.put_bytes(s3_bucket, key, bodies[i], if_none_match=True)
                wins.append(i)
            except StorageConflict:
                refused.append(i)

        threads = [threading.Thread(target=put, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert wins, "no writer won"
        assert len(wins) + len(refused) == writers
        final = s3_server.request("GET", f"/{s3_bucket}/{key}").body
        assert final in [bodies[i] for i in wins]
        winners_per_trial.append(len(wins))
    record_property("if_none_match_winners_per_trial", winners_per_trial)
    print(f"If-None-Match racing winners per trial ({writers} writers): {winners_per_trial}")


# --------------------------------------------------------------------------- lifecycle


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def _processes_mentioning(text: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def test_start_and_stop_leave_nothing(tmp_path):
    server = S3Server(tmp_path / "s3")
    t0 = time.monotonic()
    with server:
        ready = time.monotonic() - t0
        pgid = server.proc.pid
        assert server.alive() and _group_members(pgid)
        assert server.make_bucket("lathe-own") == "lathe-own"
        assert (tmp_path / "s3" / "data" / "lathe-own").is_dir()
        assert server.secret_key not in (Path(f"/proc/{pgid}/cmdline").read_bytes().decode())
    assert not server.alive() and _group_members(pgid) == []
    assert _processes_mentioning(str(tmp_path / "s3")) == []
    assert ready < 15, f"ready after {ready:.1f}s"


def test_port_already_taken_fails_clearly_and_leaves_no_process(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = S3Server(tmp_path / "s3", port=port)
        with pytest.raises(S3ServerError, match=rf"port 127\.0\.0\.1:{port} is taken") as e:
            server.start()
    assert "address already in use" in str(e.value)
    assert server.proc is None and not server.alive()
    assert _processes_mentioning(str(tmp_path / "s3")) == []


def test_server_that_never_answers_is_killed_with_its_children(tmp_path):
    """A start that times out kills the whole process group, children included."""
    fake = tmp_path / "fake-versitygw"
    fake.write_text("#!/bin/sh\nsleep 300 &\nexec sleep 301\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = S3Server(tmp_path / "s3", binary=fake, start_timeout=2)
    spawned = []
    real_wait = server._ready

    def ready():
        if server.proc is not None and server.proc.pid not in spawned:
            spawned.append(server.proc.pid)
        return real_wait()

    server._ready = ready
    with pytest.raises(S3ServerError, match="not ready after 2"):
        server.start()
    assert spawned and server.proc is None
    for pgid in spawned:
        assert _group_members(pgid) == []


def test_missing_binary_names_the_build_command(tmp_path):
    server = S3Server(tmp_path / "s3", binary=tmp_path / "nope")
    with pytest.raises(S3ServerError, match=r"e2e/s3/build\.sh"):
        server.start()
    assert server.proc is None


def test_the_pinned_build_is_in_the_cache():
    binary = find_binary()
    info = dict(line.split("=", 1) for line in (binary.parent / "BUILDINFO").read_text().splitlines())
    assert info["version"] == pinned_version() == "v1.7.0" and (binary.parent / ".complete").exists()
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == info["sha256"]
