"""Lathe's object-store client (storage/objects.py over obstore) against three real servers: versitygw
(S3), fake-gcs-server (Google Cloud Storage) and Azurite (Azure Blob Storage), one test run per store:
get, put, streamed download, multipart upload, paged listing, copy, conditional writes, and each failure
as its own StorageError reason with no secret in its text.

fake-gcs-server 1.56.1 does not implement the XML API writes object_store uses (object PUT, multipart,
copy: fsouza/fake-gcs-server#331), so on gs:// the objects are seeded through its JSON API and the write
tests run on s3:// and az:// only; test_fake_gcs_server_refuses_object_store_writes pins what it answers.
It takes any request unauthenticated, so no wrong credential can be refused there either.
"""

from __future__ import annotations

import hashlib
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from lathe.storage import (
    ChecksumMismatch,
    StorageAccessDenied,
    StorageConflict,
    StorageError,
    StorageNotFound,
    StorageTooLarge,
    StorageUnreachable,
    resolve,
)
from lathe.storage.objects import ObjectClient

MiB = 1 << 20
# The most keys one listing page holds when the client asks for no page size (S3 and GCS: 1000,
# Azure Blob: 5000); one more object than that makes the client follow a continuation token.
PAGE = {"s3": 1000, "gs": 1000, "az": 5000}


def writable(store):
    if not store.writable:
        pytest.skip("fake-gcs-server takes no XML API writes: see test_fake_gcs_server_refuses_object_store_writes")


def test_get_head_download_delete(store, tmp_path):
    body = os.urandom(4096)
    store.seed("models/m/1/model.onnx", body)
    c, b = store.client, store.bucket
    assert c.get_bytes(b, "models/m/1/model.onnx") == body
    head = c.head(b, "models/m/1/model.onnx")
    assert head.size == len(body) and head.etag
    if store.scheme == "s3":
        assert head.etag == hashlib.md5(body).hexdigest()  # noqa: S324 - S3's single-part ETag
    got = c.download(b, "models/m/1/model.onnx", tmp_path / "m.onnx", max_bytes=len(body))
    assert (got.size, got.etag) == (len(body), head.etag) and (tmp_path / "m.onnx").read_bytes() == body
    with pytest.raises(StorageTooLarge, match="over the limit of 4095"):
        c.download(b, "models/m/1/model.onnx", tmp_path / "big.onnx", max_bytes=len(body) - 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no partial file left
    c.delete(b, "models/m/1/model.onnx")
    with pytest.raises(StorageNotFound):
        c.get_bytes(b, "models/m/1/model.onnx")
    c.delete(b, "models/m/1/model.onnx")  # deleting what is gone is fine


def test_put_returns_the_etag_a_head_sees(store):
    writable(store)
    etag = store.client.put_bytes(store.bucket, "a/b.txt", b"hello", content_type="text/plain")
    assert store.client.head(store.bucket, "a/b.txt").etag == etag


def test_list_prefix_and_delimiter(store):
    keys = ["repo/a/config.pbtxt", "repo/a/1/model.py", "repo/a/2/model.py", "repo/b/config.pbtxt",
            "repo/top.txt", "repo-other/x", "other/x"]
    for k in keys:
        store.seed(k, k.encode())
    c, b = store.client, store.bucket
    objs, prefixes = c.list(b, "repo/", delimiter="/")
    assert prefixes == ["repo/a/", "repo/b/"] and [o.key for o in objs] == ["repo/top.txt"]
    objs, prefixes = c.list(b, "repo/a/", delimiter="/")
    assert prefixes == ["repo/a/1/", "repo/a/2/"] and [o.key for o in objs] == ["repo/a/config.pbtxt"]
    assert [o.key for o in c.list(b, "repo/a/")[0]] == ["repo/a/1/model.py", "repo/a/2/model.py",
                                                       "repo/a/config.pbtxt"]
    assert [o.key for o in c.list(b, "repo")[0]] == sorted(k for k in keys if k.startswith("repo"))  # mid-name
    assert [o.key for o in c.list(b)[0]] == sorted(keys)
    assert len(c.list(b, "repo/", limit=1)[0]) >= 1
    assert c.list(b, "nothing/") == ([], [])


def test_list_follows_every_page(store):
    """One object more than a page. Not on Azure: its page is 5000 blobs, about 30 s of Azurite writes on
    these 2 cores; the paging code is storage/objects.py's for every store (object_store follows the
    tokens), so S3 and GCS prove it."""
    if store.scheme == "az":
        pytest.skip("Azure's 5000-blob page: 30 s of writes here; the same paging code runs on s3:// and gs://")
    n = PAGE[store.scheme] + 1
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.seed(f"many/{i:05d}", b"x"), range(n)))
    objs, _ = store.client.list(store.bucket, "many/")
    assert [o.key for o in objs] == [f"many/{i:05d}" for i in range(n)]


def test_multipart_upload_and_copy(store, tmp_path):
    writable(store)
    c, b = store.client, store.bucket
    src = tmp_path / "engine.plan"
    src.write_bytes(os.urandom(11 * MiB))
    etag = c.upload(b, "big/engine.plan", src, part_size=5 * MiB)
    if store.scheme == "s3":
        assert etag.endswith("-3")  # S3's multipart ETag: md5 of the part md5s, "-<parts>"
    c.copy(b, "big/engine.plan", "repo/m/3/engine.plan")
    c.download(b, "repo/m/3/engine.plan", tmp_path / "back", max_bytes=12 * MiB)
    assert hashlib.sha256((tmp_path / "back").read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    small = tmp_path / "small"
    small.write_bytes(b"single part")
    c.upload(b, "small", small, part_size=5 * MiB)
    assert c.get_bytes(b, "small") == b"single part"
    with pytest.raises(StorageNotFound):
        c.copy(b, "missing", "x")


def test_conditional_writes(store):
    writable(store)
    c, b = store.client, store.bucket
    first = c.put_bytes(b, "repo/m/config.pbtxt", b"first", if_none_match=True)
    with pytest.raises(StorageConflict):
        c.put_bytes(b, "repo/m/config.pbtxt", b"second", if_none_match=True)
    assert c.get_bytes(b, "repo/m/config.pbtxt") == b"first"
    second = c.put_bytes(b, "repo/m/config.pbtxt", b"second", if_match=first)  # nobody wrote in between
    with pytest.raises(StorageConflict):
        c.put_bytes(b, "repo/m/config.pbtxt", b"third", if_match=first)  # a stale ETag: someone did
    assert c.get_bytes(b, "repo/m/config.pbtxt") == b"second" and second != first


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def test_each_failure_is_its_own_reason(store):
    c, b = store.client, store.bucket
    store.seed("k", b"x")
    with pytest.raises(StorageNotFound):
        c.get_bytes(b, "no/such/key")
    with pytest.raises(StorageNotFound):
        c.head(b, "no/such/key")
    with pytest.raises(StorageNotFound):
        c.get_bytes("lathe-no-such-bucket", "k")
    # fake-gcs-server answers the listing of a missing bucket with 500 "no bucket named ..." (GCS: 404),
    # which reads as a store failing, not as a missing bucket.
    with pytest.raises(StorageUnreachable if store.scheme == "gs" else StorageNotFound, match="lathe-no-such-bucket"):
        c.check_bucket("lathe-no-such-bucket")
    port = _closed_port()
    settings = c.settings
    if store.scheme == "s3":
        from lathe.storage.s3 import S3Settings
        down = S3Settings(settings.access_key, settings.secret_key, settings.region, f"http://127.0.0.1:{port}")
        wrong = S3Settings(settings.access_key, "not-the-secret-0123", settings.region, settings.endpoint)
    elif store.scheme == "gs":
        from lathe.storage.gcs import GCSSettings
        down, wrong = GCSSettings(settings.service_account_key, f"http://127.0.0.1:{port}"), None
    else:
        from lathe.storage.azure import AzureSettings
        down = AzureSettings(settings.account, settings.key, None, f"http://127.0.0.1:{port}/{settings.account}")
        wrong = AzureSettings(settings.account, "QUFBQQ" + settings.key[6:], None, settings.endpoint)
    with pytest.raises(StorageUnreachable, match=f"127.0.0.1:{port}[^ ]* unreachable"):
        ObjectClient(down, retries=0).head(b, "k")
    if wrong is not None:  # fake-gcs-server authenticates nobody
        with pytest.raises(StorageAccessDenied) as e:
            ObjectClient(wrong, retries=0).get_bytes(b, "k")
        assert not [s for s in wrong.secret_values() + store.secret_values() if s in str(e.value)]


def test_azure_sas_token_reads_and_a_read_only_one_is_refused_a_write(azurite_server):
    az = azurite_server
    container = az.make_container("sas-test")
    sas = az.sas_token()
    client = az.client(sas=sas)
    client.put_bytes(container, "m/model.onnx", b"weights")
    assert client.get_bytes(container, "m/model.onnx") == b"weights"
    with pytest.raises(StorageAccessDenied, match="AuthorizationPermissionMismatch") as e:
        az.client(sas=az.sas_token(permissions="rl")).put_bytes(container, "m/other", b"x")
    sig = sas.split("sig=", 1)[1]
    assert sig not in str(e.value) and sas not in str(e.value)
    assert sas not in repr(client.settings)


def test_resolve_streams_verifies_and_reuses_by_size_and_etag(store, tmp_path, monkeypatch):
    """storage.resolve as the worker runs it (the variables the operator's Job sets): a cached copy is
    reused while the store's size and ETag match, fetched again when they change; sha256 checked."""
    for k, v in store.worker_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LATHE_CACHE", str(tmp_path / "cache"))
    body = os.urandom(2048)
    store.seed("data/val.npz", body)
    uri = store.uri("data/val.npz")
    path = resolve(uri, hashlib.sha256(body).hexdigest())
    assert path.read_bytes() == body and path.is_relative_to(tmp_path / "cache" / store.scheme)
    inode = path.stat().st_ino
    assert resolve(uri).stat().st_ino == inode  # same size and ETag: not fetched again
    changed = os.urandom(2048)
    store.seed("data/val.npz", changed)
    assert resolve(uri, hashlib.sha256(changed).hexdigest()).read_bytes() == changed
    with pytest.raises(ChecksumMismatch):
        resolve(uri, "0" * 64)
    store.seed("data/train.npz", body)
    monkeypatch.setenv("LATHE_MAX_DOWNLOAD_BYTES", "100")
    with pytest.raises(StorageTooLarge, match="over the limit of 100"):
        resolve(store.uri("data/train.npz"))
    assert not (tmp_path / "cache" / store.scheme / store.bucket / "data" / "train.npz").exists()
    with pytest.raises(StorageError, match="an object, not a prefix"):
        resolve(store.uri("data/"))


def test_fake_gcs_server_refuses_object_store_writes(gcs_server, tmp_path):
    """What stops Lathe's writes on the GCS emulator, pinned so an emulator that learns the XML API makes
    this fail (then the write tests above can run on gs:// too)."""
    c, b = gcs_server.client(), gcs_server.make_bucket("lathe-writes")
    with pytest.raises(StorageError, match="PUT answered HTTP 400 invalid.*invalid uploadType"):
        c.put_bytes(b, "k", b"x")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(6 * MiB))
    with pytest.raises(StorageError, match="HTTP 400 invalid.*invalid uploadType"):
        c.upload(b, "big", big, part_size=5 * MiB)
    gcs_server.upload(b, "src", b"x")
    with pytest.raises(StorageError, match="HTTP 400 invalid.*invalid uploadType"):
        c.copy(b, "src", "dst")
    assert [o.key for o in c.list(b)[0]] == ["src"]


def test_a_secret_never_reaches_a_message_or_repr(store):
    """Every StorageError is built from status, code and message; settings print no secret."""
    assert not [s for s in store.secret_values() if s in repr(store.client.settings)]
    with pytest.raises(StorageNotFound) as e:
        store.client.get_bytes(store.bucket, "missing")
    assert not [s for s in store.secret_values() if s in str(e.value)]


def test_malformed_settings_are_clear_errors_before_any_request():
    from lathe.storage.azure import AzureSettings
    from lathe.storage.gcs import GCSSettings
    from lathe.storage.s3 import S3Settings

    assert "not a JSON key" in repr(GCSSettings("not json"))
    with pytest.raises(StorageAccessDenied, match="not JSON .*service-account.json"):
        ObjectClient(GCSSettings("not json")).get_bytes("b", "k")
    with pytest.raises(StorageError, match="expected http"):
        ObjectClient(AzureSettings("acct", "a2V5", None, "ftp://x")).get_bytes("b", "k")
    with pytest.raises(StorageError, match="expected http"):
        ObjectClient(S3Settings("a", "b", endpoint="ftp://x")).get_bytes("b", "k")
    with pytest.raises(StorageAccessDenied, match="spec.storage.azure.secretRef"):
        AzureSettings.from_env({"AZURE_STORAGE_ACCOUNT_NAME": "acct"})
    with pytest.raises(StorageAccessDenied, match="spec.storage.gcs.secretRef"):
        GCSSettings.from_env({})
