"""AWS Signature V4 for the S3 test fixture's raw requests (e2e/s3/fixture.py: creating buckets, and requests
no client would send, such as one signed with a wrong secret). Test code only: Lathe itself talks to S3
through obstore (operator/lathe/storage/objects.py)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    session_token: str | None = None


def _q(s: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(s, safe=safe)


def sign(method: str, host: str, path: str, query: Mapping[str, str], headers: dict[str, str], payload_sha: str,
         settings: Credentials, now: _dt.datetime | None = None) -> dict[str, str]:
    """Headers of a SigV4-signed S3 request (Authorization included). `path` is decoded; S3 encodes it once."""
    now = now or _dt.datetime.now(_dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    hdrs = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    hdrs.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha})
    if settings.session_token:
        hdrs["x-amz-security-token"] = settings.session_token
    names = sorted(hdrs)
    canonical = "\n".join([method, _q(path, safe="/-_.~"),
                           "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(query.items())),
                           "".join(f"{k}:{hdrs[k]}\n" for k in names), ";".join(names), payload_sha])
    scope = f"{day}/{settings.region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + settings.secret_key).encode()
    for part in (day, settings.region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    hdrs["authorization"] = (f"AWS4-HMAC-SHA256 Credential={settings.access_key}/{scope}, "
                             f"SignedHeaders={';'.join(names)}, Signature={sig}")
    return hdrs


