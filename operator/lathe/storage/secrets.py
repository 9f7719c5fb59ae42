"""What each object store's Secret must hold and how its keys reach the worker (pure: key names only,
never values). Used by the operator's validation (controller/validate.py: key names checked before any
Job) and by the Job template (controller/jobs.py: every value by secretKeyRef, a CA file by a secret
volume), so the two cannot disagree.

| store | spec field | Secret keys (required)                                   | optional            |
|-------|------------|----------------------------------------------------------|---------------------|
| s3:// | s3         | AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY                 | AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION, ca.crt |
| gs:// | gcs        | service-account.json                                     | ca.crt              |
| az:// | azure      | AZURE_STORAGE_ACCOUNT_NAME, and AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN | ca.crt |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SecretContract:
    field: str  # spec.storage.<field>
    scheme: str  # the URI scheme it serves
    required: tuple[tuple[str, ...], ...]  # each entry: one of these keys must be there
    env: tuple[tuple[str, str], ...]  # (Secret key, worker variable), mounted when the key is there
    ca_env: str  # the worker variable naming the mounted ca.crt
    ca_dir: str  # where ca.crt is mounted

    def missing(self, keys: set[str]) -> list[str]:
        """The required keys (or alternatives, joined by ' or ') the Secret lacks."""
        return [" or ".join(alts) for alts in self.required if not any(k in keys for k in alts)]

    def describe(self) -> str:
        return " and ".join(" or ".join(alts) for alts in self.required)


CONTRACTS = {
    "s3": SecretContract("s3", "s3", (("AWS_ACCESS_KEY_ID",), ("AWS_SECRET_ACCESS_KEY",)),
                         (("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
                          ("AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN")),
                         "AWS_CA_BUNDLE", "/etc/lathe/s3"),
    "gcs": SecretContract("gcs", "gs", (("service-account.json",),),
                          (("service-account.json", "GOOGLE_SERVICE_ACCOUNT_KEY"),),
                          "LATHE_GCS_CA_BUNDLE", "/etc/lathe/gcs"),
    "azure": SecretContract("azure", "az", (("AZURE_STORAGE_ACCOUNT_NAME",),
                                            ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN")),
                            (("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_NAME"),
                             ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCOUNT_KEY"),
                             ("AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_SAS_TOKEN")),
                            "LATHE_AZURE_CA_BUNDLE", "/etc/lathe/azure"),
}
BY_SCHEME = {c.scheme: c for c in CONTRACTS.values()}
# The worker variable that carries spec.storage.<field>.endpoint.
ENDPOINT_ENV = {"s3": "AWS_ENDPOINT_URL", "gcs": "LATHE_GCS_ENDPOINT", "azure": "AZURE_STORAGE_ENDPOINT"}
