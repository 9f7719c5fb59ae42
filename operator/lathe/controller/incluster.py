"""kopf's login inside a pod, the way client-go's InClusterConfig does it.

kopf's own ``login_with_service_account`` dials ``https://kubernetes.default.svc``, which needs
cluster DNS; client-go (and the kubernetes Python client) use the ``KUBERNETES_SERVICE_HOST`` and
``KUBERNETES_SERVICE_PORT`` the kubelet puts in every container, which work without it. The
token file is re-read at every login: kopf logs in again on a 401, and the kubelet rotates the
projected (bound, expiring) token in place."""

from __future__ import annotations

import os
from pathlib import Path

import kopf

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def server_url(env: dict[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def login(settings: kopf.OperatorSettings, sa_dir: Path = SA_DIR) -> kopf.ConnectionInfo | None:
    server, token_path = server_url(), sa_dir / "token"
    if server is None or not token_path.exists():
        return None
    ns_path, ca_path = sa_dir / "namespace", sa_dir / "ca.crt"
    return kopf.ConnectionInfo(
        server=server,
        token=token_path.read_text().strip() or None,
        ca_path=str(ca_path) if ca_path.exists() else None,
        default_namespace=ns_path.read_text().strip() if ns_path.exists() else None,
        trust_env=settings.networking.trust_env,
    )
