"""JWT verification: every way a token can be wrong is refused; RS256, ES256 and JWKS work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from support.certificates import pem_pair
from tokens import claims as token_claims
from tokens import forge_hs256

from orchestrator.codecs.actions import DEFAULT_PERMISSIONS
from orchestrator.codecs.errors import Unauthorized
from orchestrator.service.edge.auth import TokenVerifier, mint_token
from orchestrator.service.runtime.settings import OrchestratorSettings

SECRET = "test-secret-" * 6


def hs_settings(**overrides: Any) -> OrchestratorSettings:
    return OrchestratorSettings(jwt_secret=SECRET, **overrides)


def claims(**overrides: Any) -> dict[str, Any]:
    return token_claims("acme", ttl=60, **overrides)


def refused(verifier: TokenVerifier, token: str | None) -> str:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(token)
    return info.value.message


def test_a_valid_hs256_token_gives_the_claimed_context():
    verifier = TokenVerifier(hs_settings())
    claimed = claims(permissions=["chat:send"])  # built once: a second can tick between two
    identity = verifier.verify(jwt.encode(claimed, SECRET, algorithm="HS256"))
    assert (identity.ctx.tenant_id, identity.ctx.user_id) == ("acme", "alice")
    assert identity.ctx.permissions == frozenset({"chat:send"})
    assert identity.expires_at == claimed["exp"]


def test_tid_claim_and_default_permissions():
    verifier = TokenVerifier(hs_settings())
    c = claims(tid="acme2")
    del c["tenant_id"]
    identity = verifier.verify(jwt.encode(c, SECRET, algorithm="HS256"))
    assert identity.ctx.tenant_id == "acme2"
    assert identity.ctx.permissions == frozenset(DEFAULT_PERMISSIONS)


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        # Times are offsets from the moment the test runs (claims are built inside the test, so
        # a slow collection cannot expire them).
        ({"exp": -100}, SECRET, "expired"),
        ({"nbf": +100}, SECRET, "not yet valid"),
        ({}, "another-secret-another-secret-12345", "invalid"),
        ({"aud": "someone-else"}, SECRET, "audience"),
        ({"iss": "someone-else"}, SECRET, "issuer"),
        ({"exp": None}, SECRET, "exp"),
        ({"nbf": None}, SECRET, "nbf"),
        ({"iat": None}, SECRET, "iat"),
        ({"tenant_id": None}, SECRET, "tenant_id"),
        ({"sub": "not an id!"}, SECRET, "sub"),
        ({"permissions": "chat:send"}, SECRET, "permissions"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(overrides, key, reason):
    now = int(time.time())
    timed = {"exp", "nbf"}
    built = {k: (now + v if k in timed and v is not None else v) for k, v in overrides.items()}
    verifier = TokenVerifier(hs_settings(jwt_leeway=1))
    assert reason in refused(verifier, jwt.encode(claims(**built), key, algorithm="HS256"))


def test_missing_and_malformed_tokens_are_refused():
    verifier = TokenVerifier(hs_settings())
    assert refused(verifier, None) == "missing bearer token"
    assert refused(verifier, "") == "missing bearer token"
    assert refused(verifier, "a.b.c") == "invalid token"


def test_alg_none_is_refused():
    verifier = TokenVerifier(hs_settings())
    token = jwt.encode(claims(), None, algorithm="none")
    assert refused(verifier, token) == "invalid token"


def test_a_token_with_another_hs_algorithm_is_refused():
    verifier = TokenVerifier(hs_settings())
    assert refused(verifier, jwt.encode(claims(), SECRET, algorithm="HS512")) == "invalid token"


def test_refusals_never_contain_the_token():
    verifier = TokenVerifier(hs_settings())
    token = jwt.encode(claims(), "wrong-secret-wrong-secret-wrong-secret", algorithm="HS256")
    assert token not in refused(verifier, token)


def test_rs256_with_a_public_key_file_and_hs_rs_confusion(tmp_path: Path):
    private, public = pem_pair(tmp_path, rsa.generate_private_key(65537, 2048), "rsa")
    settings = OrchestratorSettings(
        jwt_algorithm="RS256", jwt_public_key=public, jwt_private_key=private
    )
    verifier = TokenVerifier(settings)
    identity = verifier.verify(mint_token(settings, "acme", "alice"))
    assert identity.ctx.user_id == "alice"
    # The classic confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    forged = forge_hs256(claims(), public.read_bytes())
    assert refused(verifier, forged) == "invalid token"


def test_es256_with_a_public_key_file(tmp_path: Path):
    private, public = pem_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ec")
    settings = OrchestratorSettings(
        jwt_algorithm="ES256", jwt_public_key=public, jwt_private_key=private
    )
    assert TokenVerifier(settings).verify(mint_token(settings, "acme", "bob")).ctx.user_id == "bob"
    other, _ = pem_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()), "other")
    forged = jwt.encode(claims(), other.read_text(), algorithm="ES256")
    assert refused(TokenVerifier(settings), forged) == "invalid token"


def test_rs256_with_a_jwks_file_picks_the_key_by_kid(tmp_path: Path):
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(2)]
    jwks = {"keys": []}
    for index, key in enumerate(keys):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid=f"k{index}", use="sig", alg="RS256")
        jwks["keys"].append(jwk)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    verifier = TokenVerifier(OrchestratorSettings(jwt_algorithm="RS256", jwt_jwks_file=path))
    token = jwt.encode(claims(), keys[1], algorithm="RS256", headers={"kid": "k1"})
    assert verifier.verify(token).ctx.tenant_id == "acme"
    wrong_kid = jwt.encode(claims(), keys[1], algorithm="RS256", headers={"kid": "k0"})
    assert refused(verifier, wrong_kid) == "invalid token"
    unknown = jwt.encode(claims(), keys[0], algorithm="RS256", headers={"kid": "zz"})
    assert refused(verifier, unknown) == "token signed with an unknown key"


def test_mint_token_for_rs256_needs_a_private_key(tmp_path: Path):
    _, public = pem_pair(tmp_path, rsa.generate_private_key(65537, 2048), "rsa")
    settings = OrchestratorSettings(jwt_algorithm="RS256", jwt_public_key=public)
    with pytest.raises(ValueError, match="ORCH_JWT_PRIVATE_KEY"):
        mint_token(settings, "acme", "alice")


def test_minted_hs_tokens_carry_ttl_and_permissions():
    settings = hs_settings()
    token = mint_token(settings, "acme", "alice", permissions=["sessions:read"], ttl=5)
    identity = TokenVerifier(settings).verify(token)
    assert identity.ctx.permissions == frozenset({"sessions:read"})
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 5
