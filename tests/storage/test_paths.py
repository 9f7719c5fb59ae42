"""Names and paths that cannot escape (lathe.storage.paths): the pure checks, the same rules as the
CRD's CEL regexes, symlinks resolved, and every place that joins a spec value to a folder using them."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from lathe.api.spec import ModelOptimizationSpec
from lathe.storage import paths
from lathe.storage.paths import PathRefused, check_key, check_local, check_location, check_name, safe_join
from lathe.storage.uri import parse_uri, pvc_path

GOOD = ["model.onnx", "./model.onnx", "/data/models/m.onnx", "models//m.onnx", "file:///data/m.onnx",
        "~/m.onnx", "pvc://models/digits/model.onnx", "pvc://triton-models", "pvc://triton-models/",
        "pvc://models/.hidden/m.onnx", "pvc://models/a...b/m..onnx", "pvc://models/.../x",
        "s3://bucket/prefix/", "s3://my.bucket/k", "https://host:8443/a/b.npz?x=1", "gs://b/k", "az://c/p/q"]
BAD = {
    "../m.onnx": "'..' segment", "/data/../etc/passwd": "'..' segment", "file://../x": "'..' segment",
    "a\\..\\b": "backslash", "m\x00.onnx": "NUL",
    "pvc://models/../etc/passwd": "'..' segment", "pvc://models/a/..": "'..' segment",
    "pvc://models/./m.onnx": "'.' segment", "pvc://models//etc/passwd": "absolute",
    "pvc://models/a//b": "empty segment", "pvc://models/a\\b": "backslash", "pvc://models/a\x00": "NUL",
    "s3://bucket/../other/key": "'..' segment", "s3://../key": "not a claim, bucket or host",
    "s3://./key": "not a claim, bucket or host", "https://host/a/../b": "'..' segment",
    "gs://bucket/a/./b": "'.' segment", "az://container//x": "absolute",
    "pvc:///etc/passwd": "needs a name", "S3://bucket/k": "not a URI scheme",
}


@pytest.mark.parametrize("uri", GOOD)
def test_good_locations_pass_both_the_check_and_the_crd_rule(uri):
    assert check_location(uri) == uri
    assert _cel_accepts(uri), uri


@pytest.mark.parametrize("uri, why", BAD.items())
def test_bad_locations_are_refused_by_the_check_and_the_crd_rule(uri, why):
    with pytest.raises(PathRefused, match=re.escape(why)):
        check_location(uri, "spec.model.uri")
    assert not _cel_accepts(uri), uri


def _cel_accepts(uri: str) -> bool:
    """The CRD's rule (lathe.api.spec.Location) evaluated with Python's re: these regexes use nothing
    RE2 and Python read differently (tests/operator/test_paths_apiserver.py runs the real API server)."""
    local = uri.startswith("file://") or "://" not in uri
    return re.match(paths.LOCATION_RE_LOCAL if local else paths.LOCATION_RE_URI, uri) is not None


def test_keys_are_relative_and_keep_no_trailing_slash():
    assert check_key("a/b/") == "a/b"
    assert check_key("") == ""
    for bad in ("/", "/a", "a//b", "a/./b", "..", "a/..", "a\\b"):
        with pytest.raises(PathRefused):
            check_key(bad)


def test_local_paths_may_be_absolute_but_never_climb():
    assert check_local("/abs/./x//y") == "/abs/./x//y"
    for bad in ("..", "a/../b", "/a/..", "", "a\x00"):
        with pytest.raises(PathRefused):
            check_local(bad)


@pytest.mark.parametrize("name, ok", [("digits", True), ("digits.v2", True), ("a_b-c", True), (".", False),
                                      ("..", False), (".hidden", False), ("a/b", False), ("", False),
                                      ("a\\b", False)])
def test_names_are_one_plain_folder(name, ok):
    assert (re.match(paths.NAME_RE, name) is not None) == ok
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(PathRefused):
            check_name(name)


def test_safe_join_follows_symlinks_and_refuses_what_leaves(tmp_path):
    claim, outside = tmp_path / "claim", tmp_path / "outside"
    (claim / "in").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("x")
    (claim / "inside-link").symlink_to(claim / "in")
    (claim / "out-link").symlink_to(outside)
    (claim / "file-link").symlink_to(outside / "secret")
    assert safe_join(claim, "in/new/file") == claim / "in/new/file"  # not there yet: fine
    assert safe_join(claim, "inside-link/x") == claim / "in/x"  # a link that stays inside: resolved
    assert safe_join(claim) == claim
    for rel in ("out-link", "out-link/secret", "file-link"):
        with pytest.raises(PathRefused, match="outside"):
            safe_join(claim, rel)
    with pytest.raises(PathRefused, match="'..' segment"):
        safe_join(claim, "in/../../outside")  # never even joined
    # a prefix of the name is not containment: /x/claim-other is not inside /x/claim
    (tmp_path / "claim-other").mkdir()
    (claim / "sibling").symlink_to(tmp_path / "claim-other")
    with pytest.raises(PathRefused):
        safe_join(claim, "sibling")


def test_parse_uri_and_pvc_path_use_the_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("LATHE_PVC_ROOT", str(tmp_path))
    monkeypatch.delenv("LATHE_PVC_MOUNTS", raising=False)
    assert parse_uri("pvc://models/a/b.onnx") == ("pvc", "models", "a/b.onnx")
    with pytest.raises(PathRefused):
        parse_uri("pvc://models/a/../../b")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "etc").symlink_to("/etc")
    assert pvc_path("models", "a/b.onnx") == tmp_path / "models/a/b.onnx"
    with pytest.raises(PathRefused, match="outside"):
        pvc_path("models", "etc/passwd")


@pytest.mark.parametrize("field, value", [
    (("model", "uri"), "pvc://models/../etc/passwd"), (("data", "validation", "uri"), "pvc://d/./v.npz"),
    (("data", "calibration", "uri"), "s3://b//abs"), (("data", "training", "uri"), "../t.npz"),
    (("artifacts",), "pvc://reports/../.."), (("publish", "repository"), "pvc://triton-models/.."),
    (("publish", "modelName"), "."), (("publish", "modelName"), ".."),
    (("publish", "rollout", "capture", "uri"), "pvc://c/x/../../y"), (("tensorrt", "timingCache"), "/cache/../etc"),
    (("tensorrt", "timingCache"), "pvc://c/cache"),
])
def test_the_spec_refuses_each_field(field, value):
    spec = {"model": {"uri": "m.onnx"}, "data": {"validation": {"uri": "v.npz"}, "calibration": {"uri": "c.npz"},
                                                 "training": {"uri": "t.npz"}},
            "publish": {"repository": "/r", "modelName": "m", "rollout": {"capture": {"enabled": True}}},
            "tensorrt": {}}
    node = spec
    for k in field[:-1]:
        node = node[k]
    node[field[-1]] = value
    with pytest.raises(ValidationError) as e:
        ModelOptimizationSpec.model_validate(spec)
    assert [err["loc"] for err in e.value.errors()] == [field], e.value.errors()
