"""Triton control in explicit model-control mode, through the repository API (tritonclient.http).

The model's `config.pbtxt` in the repository (a folder, or S3: serving.repo_files) is the source of truth for which versions are served
(`version_policy: specific`), so that a restarted Triton or operator sees the same state:
`serve(model, [N, N+1])` rewrites the policy atomically and asks Triton to (re)load the model;
Triton keeps serving N while N+1 loads. If the load fails, the previous config is restored and the
previous versions are reloaded, and `TritonLoadError` is raised: N keeps serving. Config overrides
through the load API are never used (they persist inside Triton and hide the file).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .config import config_versions, set_version_policy
from .repo_files import repository_files


class TritonError(RuntimeError):
    """Base class of Triton control errors."""


class TritonUnavailable(TritonError):
    """Triton cannot be reached (connection refused, timeout, not live)."""


class TritonLoadError(TritonError):
    """A load/unload was refused or did not reach the wanted state; the previous state was restored."""


def _client(url: str, timeout: float):
    import tritonclient.http as http

    return http.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)


class TritonControl:
    def __init__(self, url: str, repository: str | Path, *, metrics_url: str | None = None,
                 timeout: float = 120.0, poll: float = 0.05, s3_client=None):
        """url: Triton HTTP host:port. repository: the model repository as this process sees it (path, pvc://
        or an s3://, gs:// or az:// prefix, read and written with `s3_client`: an object-store client of that
        scheme, default one from this process's environment).
        metrics_url: Prometheus endpoint; default http://<host>:8002/metrics."""
        self.url = url.removeprefix("http://")
        self.files = repository_files(repository, s3_client)
        self.repository = self.files.where
        host = self.url.rsplit(":", 1)[0]
        self.metrics_url = metrics_url or f"http://{host}:8002/metrics"
        self.timeout = timeout
        self.poll = poll
        self._c = _client(self.url, timeout)

    # ------------------------------------------------------------------ low level
    def _call(self, what: str, fn, *a, **kw):
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*a, **kw)
        except InferenceServerException as e:
            msg = str(e)
            if any(s in msg.lower() for s in ("connection refused", "failed to establish", "timed out",
                                               "name or service not known", "connection reset")):
                raise TritonUnavailable(f"Triton at {self.url} unreachable during {what}: {msg}") from e
            raise TritonLoadError(f"{what}: {msg.strip()}") from e
        except (OSError, ConnectionError) as e:
            raise TritonUnavailable(f"Triton at {self.url} unreachable during {what}: {e}") from e
        except Exception as e:  # geventhttpclient raises its own socket errors
            if type(e).__name__ in ("timeout", "ConnectionRefusedError", "gaierror"):
                raise TritonUnavailable(f"Triton at {self.url} unreachable during {what}: {e}") from e
            raise

    def live(self) -> bool:
        try:
            return bool(self._call("health", self._c.is_server_live))
        except TritonError:
            return False

    def require_live(self) -> None:
        if not self.live():
            raise TritonUnavailable(f"Triton at {self.url} is not live")

    def index(self) -> dict[tuple[str, int | None], tuple[str, str]]:
        """{(model, version): (state, reason)} from the repository index."""
        out = {}
        for m in self._call("repository index", self._c.get_model_repository_index):
            v = m.get("version")
            out[(m["name"], int(v) if v not in (None, "") else None)] = (m.get("state", ""), m.get("reason", ""))
        return out

    def ready_versions(self, model: str) -> list[int]:
        return sorted(v for (n, v), (s, _) in self.index().items() if n == model and v is not None and s == "READY")

    def version_ready(self, model: str, version: int) -> bool:
        try:
            return bool(self._call("readiness", self._c.is_model_ready, model, str(version)))
        except TritonLoadError:
            return False

    def metrics_text(self) -> str:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=min(self.timeout, 10)) as r:
                return r.read().decode()
        except (urllib.error.URLError, OSError) as e:
            raise TritonUnavailable(f"Triton metrics at {self.metrics_url} unreachable: {e}") from e

    def infer(self, model: str, inputs: dict, outputs: Sequence[str]) -> dict:
        """One inference (numpy arrays in and out): the operator's own calls, e.g. draining a capture."""
        import tritonclient.http as http
        from tritonclient.utils import np_to_triton_dtype

        ins = []
        for name, a in inputs.items():
            i = http.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
            i.set_data_from_numpy(a, binary_data=True)
            ins.append(i)
        outs = [http.InferRequestedOutput(n, binary_data=True) for n in outputs]
        res = self._call(f"infer {model}", self._c.infer, model, ins, outputs=outs)
        return {n: res.as_numpy(n) for n in outputs}

    # ------------------------------------------------------------------ operations
    def load(self, model: str) -> None:
        """(Re)load a model from its config on disk; raises TritonLoadError with Triton's message."""
        self._call(f"load {model}", self._c.load_model, model)

    def serve(self, model: str, versions: Sequence[int], *, wait: bool = True) -> None:
        """Make exactly `versions` of `model` served: rewrite version_policy, load, wait for readiness and for
        the versions that left the policy to be unloaded. On failure restore the previous config and serving
        state, then raise TritonLoadError (TritonUnavailable when Triton is gone)."""
        want = sorted(set(int(v) for v in versions))
        if not want:
            raise ValueError("serve() needs at least one version; use unload() to stop serving a model")
        missing = [v for v in want if not self.files.has_version(model, v)]
        if missing:
            raise TritonLoadError(f"{model}: versions {missing} are not in the repository {self.repository}")
        self.require_live()
        rel = f"{model}/config.pbtxt"
        old = self.files.read_text(rel)
        if old is None:
            raise TritonLoadError(f"{model}: no config.pbtxt in the repository {self.repository}")
        before = self.ready_versions(model)
        new = set_version_policy(old, want) if config_versions(old) != want else old
        if new != old:
            self.files.write_text(rel, new)
        try:
            self.load(model)
            if wait:
                self._wait(model, want)
        except TritonError as e:
            if new != old:
                self.files.write_text(rel, old)
            restored = ""
            if before and not isinstance(e, TritonUnavailable):
                try:
                    self.load(model)  # Triton keeps the old model on a failed reload; make sure of it
                    self._wait(model, before)
                    restored = f"; versions {before} still served"
                except TritonError as e2:
                    restored = f"; restoring versions {before} also failed: {e2}"
            err = type(e) if isinstance(e, TritonUnavailable) else TritonLoadError
            raise err(f"loading {model} versions {want} failed: {e}{restored}") from e

    def _wait(self, model: str, want: list[int]) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            idx = {v: sr for (n, v), sr in self.index().items() if n == model and v is not None}
            ready = sorted(v for v, (s, _) in idx.items() if s == "READY")
            if ready == want:
                return
            bad = {v: r for v, (s, r) in idx.items() if v in want and s == "UNAVAILABLE" and r}
            if bad:
                raise TritonLoadError(f"{model}: versions failed to load: {bad}")
            if time.monotonic() > deadline:
                raise TritonLoadError(f"{model}: wanted versions {want} ready, have {ready} after {self.timeout}s")
            time.sleep(self.poll)

    def unload(self, model: str, *, wait: bool = True) -> None:
        self._call(f"unload {model}", self._c.unload_model, model)
        deadline = time.monotonic() + self.timeout
        while wait and self.ready_versions(model):
            if time.monotonic() > deadline:
                raise TritonLoadError(f"{model}: still ready {self.timeout}s after unload")
            time.sleep(self.poll)

    def close(self) -> None:
        self._c.close()


__all__ = ["TritonControl", "TritonError", "TritonUnavailable", "TritonLoadError"]
