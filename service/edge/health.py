"""Liveness, readiness (NATS connected, JetStream answering) and the dev-only token route."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
from aiohttp import web
from nats.aio.client import Client
from nats.errors import Error as NatsError

from orchestrator.codecs.errors import Forbidden, Unavailable
from orchestrator.codecs.frames import DevToken
from orchestrator.codecs.types import Identifier
from orchestrator.codecs.wire import encode
from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.routes import convert
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.subjects import Subjects


class Health:
    """`/health/live` says the process runs; `/health/ready` that it can serve requests now.

    Readiness asks JetStream for the info of the `sessions` and `tasks` buckets' streams and of
    the session events stream: what every request of the edge depends on. (The edge's NATS role
    may read these streams' info, never their keys.) It also fails while a background loop of
    this process keeps failing, and names the loop.
    """

    def __init__(self, nc: Client, settings: OrchestratorSettings, supervisor: Supervisor) -> None:
        self._nc = nc
        self._settings = settings
        self._supervisor = supervisor
        self._streams = (
            Subjects.kv_stream(settings.sessions_bucket),
            Subjects.kv_stream(settings.tasks_bucket),
            settings.events_stream,
        )

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/health/live", self.live), web.get("/health/ready", self.ready)]

    async def live(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, _request: web.Request) -> web.Response:
        if not self._nc.is_connected:
            raise Unavailable("not connected to NATS")
        failing = self._supervisor.failing()
        if failing:
            raise Unavailable(
                f"background loops keep failing: {', '.join(sorted(failing))}",
                {"failing_loops": failing},
            )
        timeout = self._settings.health_check_timeout
        js = self._nc.jetstream(timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                for stream in self._streams:
                    await js.stream_info(stream)
        except (TimeoutError, NatsError) as exc:
            raise Unavailable(f"JetStream not answering: {type(exc).__name__}") from None
        return web.json_response({"status": "ready"})


class _DevQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenant_id: Identifier = "dev"
    user_id: Identifier = "dev-user"


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def _host_name(host: str) -> str:
    """`Host` without its port: `[::1]:8080` -> `::1`, `localhost:8080` -> `localhost`."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class DevTokenRoute:
    """`GET /api/dev/token?tenant_id=&user_id=` mints a token for the page (`orchestrator dev`).

    Answers only a loopback peer that named a loopback Host: a page of another site that
    rebinds its DNS name to 127.0.0.1 still sends its own name as Host, and is refused.
    """

    def __init__(self, settings: OrchestratorSettings) -> None:
        self._settings = settings

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/dev/token", self.token)]

    async def token(self, request: web.Request) -> web.Response:
        if (
            _host_name(request.host).lower() not in _LOOPBACK_HOSTS
            or request.remote not in _LOOPBACK_PEERS
        ):
            raise Forbidden("dev tokens are served to loopback addresses only")
        query = convert(_DevQuery, dict(request.query))
        ttl = self._settings.jwt_token_ttl
        expires = datetime.now(UTC) + timedelta(seconds=int(ttl))
        token = mint_token(self._settings, query.tenant_id, query.user_id, ttl=ttl)
        body = DevToken(
            token=token, tenant_id=query.tenant_id, user_id=query.user_id, expires_at=expires
        )
        return web.Response(body=encode(body), content_type="application/json")
