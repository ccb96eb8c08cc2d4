"""JWT claims and forged tokens for the tests that attack the edge's token checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any


def claims(tenant: str = "dev", ttl: int = 600, **overrides: Any) -> dict[str, Any]:
    """Valid claims for user alice of `tenant`; an override of None drops that claim."""
    now = int(time.time())
    base = {"sub": "alice", "tenant_id": tenant, "iat": now, "nbf": now, "exp": now + ttl,
            "aud": "nooble4", "iss": "nooble4"}  # fmt: skip
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def forge_hs256(payload: dict[str, Any], secret: bytes) -> str:
    """HS256 by hand, e.g. with an RSA public key as the secret: PyJWT refuses, an attacker not."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing = f"{header}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(signature)}"
