"""The operator's in-cluster login: the kubelet's service environment and the projected token,
re-read at each login (rotation), with no DNS name to resolve."""

import kopf

from lathe.controller import incluster


def test_server_url_from_the_service_environment():
    assert incluster.server_url({"KUBERNETES_SERVICE_HOST": "198.18.1.1", "KUBERNETES_SERVICE_PORT": "443"}) \
        == "https://198.18.1.1:443"
    assert incluster.server_url({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}) \
        == "https://[fd00::1]:6443"
    assert incluster.server_url({}) is None


def test_login_reads_the_token_each_time(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "198.18.1.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "namespace").write_text("lathe-system")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    settings = kopf.OperatorSettings()
    info = incluster.login(settings, tmp_path)
    assert (info.server, info.token, info.default_namespace, info.ca_path) == \
        ("https://198.18.1.1:443", "first", "lathe-system", str(tmp_path / "ca.crt"))
    (tmp_path / "token").write_text("rotated")
    assert incluster.login(settings, tmp_path).token == "rotated"


def test_no_token_means_not_in_a_pod(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "198.18.1.1")
    assert incluster.login(kopf.OperatorSettings(), tmp_path) is None
