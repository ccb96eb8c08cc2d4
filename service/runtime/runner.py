"""Process lifecycle: start the parts a command asks for, wait for a signal, stop them in order."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loguru import logger
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import KeyWrongLastSequenceError

from orchestrator.codecs.agent_configs import Access, AgentConfig, ModelParams
from orchestrator.codecs.wire import encode
from orchestrator.service.agent.openai_backend import OpenAIBackend
from orchestrator.service.agent.reference_agent import ReferenceAgent
from orchestrator.service.agent.sdk import ExecutionService
from orchestrator.service.edge.edge_server import Edge
from orchestrator.service.runtime.embedded import embedded_server
from orchestrator.service.runtime.instance import Orchestrator
from orchestrator.service.runtime.metrics import Metrics
from orchestrator.service.runtime.nats_connection import connect
from orchestrator.service.runtime.nats_server import NatsServer
from orchestrator.service.runtime.settings import AgentBackend, AgentSettings, OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.subjects import Subjects

DEMO_TENANT = "dev"
DEMO_AGENT = "demo"


@dataclass(frozen=True)
class Roles:
    """Which parts this process runs."""

    service: bool = True
    edge: bool = True
    agent: bool = False
    seed_demo: bool = False
    # `orchestrator dev` only: GET /api/dev/token mints tokens for anyone on loopback.
    dev_token_route: bool = False


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def seed_demo(nc: Client, settings: OrchestratorSettings) -> None:
    """The `demo` agent of tenant `dev`, unless one is already configured."""
    js = nc.jetstream(timeout=settings.nats_request_timeout)
    kv = await js.key_value(settings.agent_configs_bucket)
    config = AgentConfig(
        tenant_id=DEMO_TENANT,
        name="Demo agent",
        access=Access.TENANT,
        model=ModelParams(name="demo-echo", system_prompt="Answer deterministically."),
    )
    with contextlib.suppress(KeyWrongLastSequenceError):  # keep an operator's edits
        await kv.create(DEMO_AGENT, encode(config))


def run(
    settings: OrchestratorSettings, roles: Roles,
    on_ready: Callable[[dict], Awaitable[None]] | None = None,
) -> None:  # fmt: skip
    """The process: embedded nats-server (if no URL is set) around the asyncio service."""
    server: NatsServer | None = None
    if settings.embedded:
        server = embedded_server(settings).start()
        logger.info("embedded nats-server at {} (JetStream in {})", server.url, server.store_dir)
    try:
        asyncio.run(serve(settings, roles, [server.url] if server else settings.nats_url, on_ready))
    finally:
        if server is not None:
            server.stop()
            logger.info("embedded nats-server stopped")


async def serve(
    settings: OrchestratorSettings, roles: Roles, servers: list[str],
    on_ready: Callable[[dict], Awaitable[None]] | None = None, stop: asyncio.Event | None = None,
) -> None:  # fmt: skip
    """Run until `stop` (default: SIGINT/SIGTERM), then shut down cleanly."""
    stop = stop or stop_on_signals()
    subjects = Subjects(settings.subject_prefix)
    telemetry = Telemetry.start(settings)
    metrics = Metrics(telemetry.meter)
    orchestrator: Orchestrator | None = None
    edge = agent = model = None

    async def on_reconnect() -> None:
        if orchestrator is not None:
            await orchestrator.on_reconnect()
        if edge is not None:
            await edge.on_reconnect()

    connecting = asyncio.ensure_future(
        connect(
            settings, servers, f"orchestrator-{settings.instance_id}", on_reconnect=on_reconnect
        )
    )
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({connecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():  # a signal while still waiting for NATS
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        return
    stopped.cancel()
    nc = connecting.result()
    try:
        if roles.service:
            orchestrator = Orchestrator(nc, settings, telemetry, metrics)
            await orchestrator.start()
        if roles.seed_demo:
            await seed_demo(nc, settings)
        if roles.agent:
            agent_settings = AgentSettings()
            if agent_settings.backend is AgentBackend.OPENAI:
                model = OpenAIBackend(agent_settings)
                agent = ExecutionService(nc, subjects, agent_settings.backend.value, model,
                                         agent_settings, telemetry)  # fmt: skip
            else:
                agent = ReferenceAgent(nc, subjects, agent_settings, telemetry)
            await agent.start()
        if roles.edge:
            edge = Edge(
                settings, nc, subjects, metrics, telemetry.prometheus_reader,
                dev_token_route=roles.dev_token_route,
            )  # fmt: skip
            await edge.start()
        if on_ready:
            await on_ready({"nats_url": servers[0], "edge": edge})
        await stop.wait()
        logger.info("shutting down")
    finally:
        if edge is not None:
            await edge.stop()
        if orchestrator is not None:
            await orchestrator.stop()
        if agent is not None:
            await agent.stop(settings.shutdown_grace)
        if model is not None:
            await model.close()
        with contextlib.suppress(NatsError):
            await nc.drain()
        await asyncio.to_thread(telemetry.shutdown)  # flushes spans and metrics
