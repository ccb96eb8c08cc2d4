"""JWT verification (the edge's only source of identity) and minting (`orchestrator token`, dev)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import jwt
from aiohttp import web
from loguru import logger

from orchestrator.codecs.actions import DEFAULT_PERMISSIONS
from orchestrator.codecs.errors import Unauthorized
from orchestrator.codecs.types import IDENTIFIER_PATTERN
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.ids import new_id

_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_PERMISSION = re.compile(r"^[a-z_*]+(:[a-z_*]+)?$")
_REQUIRED = ["exp", "nbf", "iat", "sub"]


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller: its execution context and when its token expires (epoch seconds)."""

    ctx: ExecutionContext
    expires_at: float

    @property
    def expires_at_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.expires_at, UTC)

    def same_caller(self, other: Identity) -> bool:
        return self.ctx.owns(other.ctx.tenant_id, other.ctx.user_id)


class TokenVerifier:
    """Verifies tokens with the one configured algorithm and key; everything else is refused."""

    def __init__(self, settings: OrchestratorSettings) -> None:
        self._settings = settings
        self._algorithm = settings.jwt_algorithm
        self._key: Any = None
        self._jwks: dict[str | None, Any] = {}
        if self._algorithm.startswith("HS"):
            self._key = settings.hs_secret
        elif settings.jwt_jwks_file is not None:
            keyset = jwt.PyJWKSet.from_json(settings.jwt_jwks_file.read_text())
            self._jwks = {key.key_id: key.key for key in keyset.keys}
        elif settings.jwt_public_key is not None:
            self._key = settings.jwt_public_key.read_text()

    def _key_for(self, token: str) -> Any:
        if not self._jwks:
            return self._key
        kid = jwt.get_unverified_header(token).get("kid")
        if kid in self._jwks:
            return self._jwks[kid]
        if kid is None and len(self._jwks) == 1:
            return next(iter(self._jwks.values()))
        raise Unauthorized("token signed with an unknown key")

    def verify(self, token: str | None) -> Identity:
        """The identity a token proves; `Unauthorized` (never naming the token) otherwise."""
        if not token:
            raise Unauthorized("missing bearer token")
        s = self._settings
        try:
            claims = jwt.decode(
                token,
                self._key_for(token),
                algorithms=[self._algorithm],
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token issuer not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks the {exc.claim!r} claim") from None
        except (jwt.InvalidTokenError, jwt.InvalidKeyError) as exc:
            logger.debug("token refused: {}", type(exc).__name__)
            raise Unauthorized("invalid token") from None
        return _identity(claims)


@lru_cache(maxsize=256)
def _permission_set(permissions: tuple[str, ...]) -> frozenset[str]:
    """One shared set per distinct grant list: most callers share a handful of role sets."""
    return frozenset(permissions)


def _identity(claims: dict[str, Any]) -> Identity:
    user_id = claims.get("sub")
    tenant_id = claims.get("tenant_id", claims.get("tid"))
    for name, value in (("sub", user_id), ("tenant_id", tenant_id)):
        if not isinstance(value, str) or not _IDENTIFIER.match(value):
            raise Unauthorized(f"token claim {name!r} missing or not an identifier")
    permissions = claims.get("permissions", list(DEFAULT_PERMISSIONS))
    if not isinstance(permissions, list) or not all(
        isinstance(p, str) and len(p) <= 64 and _PERMISSION.match(p) for p in permissions
    ):
        raise Unauthorized("token claim 'permissions' must be a list of permissions")
    action_id = new_id()
    ctx = ExecutionContext(
        tenant_id=tenant_id,
        user_id=user_id,
        permissions=_permission_set(tuple(permissions)),
        action_id=action_id,
        correlation_id=action_id,
    )
    return Identity(ctx=ctx, expires_at=float(claims["exp"]))


def mint_token(
    settings: OrchestratorSettings,
    tenant_id: str,
    user_id: str,
    permissions: list[str] | None = None,
    ttl: float | None = None,
) -> str:
    """A token the edge accepts: HS* with the secret, RS*/ES* with `jwt_private_key`."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "tenant_id": tenant_id,
        "permissions": list(permissions if permissions is not None else DEFAULT_PERMISSIONS),
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl if ttl is not None else settings.jwt_token_ttl),
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
    }
    if settings.jwt_algorithm.startswith("HS"):
        key: Any = settings.hs_secret
    elif settings.jwt_private_key is not None:
        key = settings.jwt_private_key.read_text()
    else:
        raise ValueError(f"{settings.jwt_algorithm} tokens need ORCH_JWT_PRIVATE_KEY to be minted")
    return jwt.encode(claims, key, algorithm=settings.jwt_algorithm)


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if the request has one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
