"""The edge: an aiohttp application (HTTP API, WebSocket bridge, health, page) and its server."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

from aiohttp import web
from loguru import logger
from nats.aio.client import Client
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from orchestrator.codecs.errors import StartupFailed
from orchestrator.service.edge.auth import TokenVerifier
from orchestrator.service.edge.bus import BusClient
from orchestrator.service.edge.connections import (
    ConnectionGuard,
    connection_cap,
    handler_limits,
    install_log_filter,
)
from orchestrator.service.edge.edge_deps import EdgeDeps
from orchestrator.service.edge.event_stream import EventStreamRoute
from orchestrator.service.edge.health import DevTokenRoute, Health
from orchestrator.service.edge.middleware import (
    cors_middleware,
    error_middleware,
    security_headers,
    websocket_origin_middleware,
)
from orchestrator.service.edge.openapi_doc import OpenApiRoute
from orchestrator.service.edge.ratelimit import UserLimiter
from orchestrator.service.edge.routes import Api
from orchestrator.service.edge.ws_bridge import WebSocketBridge
from orchestrator.service.runtime.metrics import PROMETHEUS_CONTENT_TYPE, prometheus_text
from orchestrator.service.runtime.settings import (
    Environment,
    InsecureSettings,
    OrchestratorSettings,
)
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.subjects import Subjects

STATIC = Path(__file__).with_name("static")
BRIDGE_KEY = web.AppKey("bridge", WebSocketBridge)
EVENT_STREAMS_KEY = web.AppKey("event_streams", EventStreamRoute)


def _metrics_route(reader: InMemoryMetricReader | None) -> web.RouteDef:
    """`GET /metrics`: the process's OTel metrics in the Prometheus text format."""

    async def metrics(_request: web.Request) -> web.Response:
        response = web.Response(body=prometheus_text(reader).encode())
        response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return response

    return web.get("/metrics", metrics)


def build_app(
    settings: OrchestratorSettings,
    nc: Client,
    subjects: Subjects,
    *,
    telemetry: Telemetry | None = None,
    dev_token_route: bool = False,
    supervisor: Supervisor | None = None,
) -> web.Application:
    """The whole edge as one application; nothing global, everything from the arguments.

    `dev_token_route` (only `orchestrator dev` sets it) mounts `GET /api/dev/token`. In prod
    an edge without a secret or explicit origins is refused (`InsecureSettings`).
    """
    problems = settings.edge_problems()
    if problems:
        raise InsecureSettings("; ".join(problems))
    app = web.Application(
        middlewares=[
            cors_middleware(settings.allowed_cors_origins),
            websocket_origin_middleware(
                settings.allowed_ws_origins, same_origin=settings.env is Environment.DEV
            ),
            error_middleware,
        ],
        client_max_size=settings.max_message_bytes,
    )
    app.on_response_prepare.append(security_headers)
    telemetry = telemetry or Telemetry.off()
    supervisor = supervisor or Supervisor(settings)
    deps = EdgeDeps(
        settings=settings,
        nc=nc,
        subjects=subjects,
        bus=BusClient.for_edge(nc, subjects, settings),
        verifier=TokenVerifier(settings),
        limiter=UserLimiter(settings.user_rate, settings.user_burst),
        supervisor=supervisor,
        metrics=telemetry.metrics,
    )
    bridge = WebSocketBridge(deps)
    app[BRIDGE_KEY] = bridge
    app.add_routes(Api(deps).routes())
    app.add_routes(bridge.routes())
    event_streams = EventStreamRoute(deps)
    app[EVENT_STREAMS_KEY] = event_streams
    app.add_routes(event_streams.routes())
    app.add_routes(Health(nc, settings, supervisor).routes())
    app.add_routes(OpenApiRoute().routes())
    if dev_token_route:
        app.add_routes(DevTokenRoute(settings).routes())
    if settings.metrics_prometheus:
        app.add_routes([_metrics_route(telemetry.prometheus_reader)])

    async def index(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app.router.add_get("/", index)
    app.router.add_static("/static", STATIC)
    app.on_shutdown.append(bridge.shutdown)
    app.on_shutdown.append(event_streams.shutdown)
    return app


class Edge:
    """Serves `build_app` on `edge_host:edge_port` (port 0 picks a free one, see `port`)."""

    def __init__(
        self,
        settings: OrchestratorSettings,
        nc: Client,
        subjects: Subjects,
        *,
        telemetry: Telemetry | None = None,
        dev_token_route: bool = False,
        supervisor: Supervisor | None = None,
    ) -> None:
        """`supervisor`: the process's, so readiness sees every loop (the edge's own if None);
        `telemetry`: the process's, whose metrics `/metrics` serves (none recorded if None)."""
        self.settings = settings
        self.app = build_app(
            settings,
            nc,
            subjects,
            telemetry=telemetry,
            dev_token_route=dev_token_route,
            supervisor=supervisor,
        )
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.port: int | None = None

    @property
    def bridge(self) -> WebSocketBridge:
        return self.app[BRIDGE_KEY]

    @property
    def url(self) -> str:
        return f"http://{self.settings.edge_host}:{self.port}"

    async def start(self) -> None:
        """Listen; on return `port` is the bound port.

        The listening socket is ours, not an aiohttp site's: each accepted connection passes the
        `ConnectionGuard` (a 503 beyond the process's connection cap) before aiohttp sees it.
        """
        s = self.settings
        install_log_filter()
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=s.shutdown_grace, **handler_limits(s)
        )
        await runner.setup()
        self._runner = runner  # stop() releases it even if listening fails or is cancelled
        self.guard = ConnectionGuard(runner.server, connection_cap(s), self._refused)
        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(
                self.guard, s.edge_host, s.edge_port, reuse_address=True
            )
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            fix = (
                "set ORCH_EDGE_PORT to a free port (0 picks one)"
                if exc.errno == errno.EADDRINUSE
                else "check ORCH_EDGE_HOST and ORCH_EDGE_PORT"
            )
            raise StartupFailed(
                f"the edge cannot listen on {s.edge_host}:{s.edge_port}: {reason}; {fix}"
            ) from None
        self.port = self._listener.sockets[0].getsockname()[1]
        logger.info("edge listening on {} (at most {} connections)", self.url, self.guard.cap)

    def _refused(self) -> None:
        refused = self.guard.refused
        if refused & (refused - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood is a few lines
            logger.warning(
                "edge at its connection limit ({}): {} connections refused with 503",
                self.guard.cap, refused,
            )  # fmt: skip

    async def on_reconnect(self) -> None:
        """NATS came back: every WebSocket and SSE stream catches up on what it may have missed."""
        self.bridge.resync()
        self.app[EVENT_STREAMS_KEY].resync()

    async def stop(self) -> None:
        """Stop listening, close every WebSocket with 1012, finish requests, release the port."""
        runner, self._runner = self._runner, None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if runner is not None:
            await runner.cleanup()
            if self.port is not None:
                logger.info("edge on port {} stopped", self.port)
