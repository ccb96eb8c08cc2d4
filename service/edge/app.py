"""The edge: an aiohttp application (HTTP API, WebSocket bridge, health, page) and its server."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from aiohttp import web
from loguru import logger
from nats.aio.client import Client

from orchestrator.subjects import Subjects

from ..settings import Environment, OrchestratorSettings
from .auth import TokenVerifier
from .bus import BusClient
from .health import DevTokenRoute, Health
from .middleware import cors_middleware, error_middleware
from .ratelimit import UserLimiter
from .routes import Api
from .ws import WebSocketBridge

STATIC = Path(__file__).with_name("static")
BRIDGE_KEY = web.AppKey("bridge", WebSocketBridge)


def _metrics_routes(settings: OrchestratorSettings, metrics: Any) -> list[web.RouteDef]:
    """`GET /metrics` when Prometheus metrics are on and the metrics module offers a handler."""
    if not settings.metrics_prometheus:
        return []
    try:
        module = importlib.import_module("orchestrator.service.metrics")
    except ImportError:
        logger.warning("ORCH_METRICS_PROMETHEUS is set but no metrics module is installed")
        return []
    handler = getattr(module, "prometheus_handler", None)
    if handler is None:
        return []
    return [web.get("/metrics", handler(metrics))]


def build_app(
    settings: OrchestratorSettings, nc: Client, subjects: Subjects, metrics: Any = None
) -> web.Application:
    """The whole edge as one application; nothing global, everything from the arguments."""
    app = web.Application(
        middlewares=[cors_middleware(settings.cors_origins), error_middleware],
        client_max_size=settings.max_message_bytes,
    )
    bus = BusClient(nc, subjects, settings)
    verifier = TokenVerifier(settings)
    limiter = UserLimiter(settings.user_rate, settings.user_burst)
    bridge = WebSocketBridge(nc, subjects, bus, verifier, limiter, settings)
    app[BRIDGE_KEY] = bridge
    app.add_routes(Api(bus, verifier, limiter, settings).routes())
    app.add_routes(bridge.routes())
    app.add_routes(Health(nc, settings).routes())
    if settings.env is Environment.DEV:
        app.add_routes(DevTokenRoute(settings).routes())
    app.add_routes(_metrics_routes(settings, metrics))

    async def index(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app.router.add_get("/", index)
    app.router.add_static("/static", STATIC)
    app.on_shutdown.append(bridge.shutdown)
    return app


class Edge:
    """Serves `build_app` on `edge_host:edge_port` (port 0 picks a free one, see `port`)."""

    def __init__(
        self, settings: OrchestratorSettings, nc: Client, subjects: Subjects, metrics: Any = None
    ) -> None:
        self.settings = settings
        self.app = build_app(settings, nc, subjects, metrics)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def bridge(self) -> WebSocketBridge:
        return self.app[BRIDGE_KEY]

    @property
    def url(self) -> str:
        return f"http://{self.settings.edge_host}:{self.port}"

    async def start(self) -> None:
        """Listen; on return `port` is the bound port."""
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self.settings.shutdown_grace
        )
        await runner.setup()
        site = web.TCPSite(runner, self.settings.edge_host, self.settings.edge_port)
        await site.start()
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.edge_port
        logger.info("edge listening on {}", self.url)

    async def stop(self) -> None:
        """Stop listening, close every WebSocket with 1012, finish requests, release the port."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            logger.info("edge on port {} stopped", self.port)
