"""Process lifecycle: start the parts a command asks for, wait for a signal, stop them in order."""

from __future__ import annotations

import asyncio
import contextlib
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
from orchestrator.service.runtime import signals
from orchestrator.service.runtime.embedded import (
    CREDENTIALS_FILE,
    EmbeddedCredentials,
    start_embedded,
)
from orchestrator.service.runtime.instance import Orchestrator
from orchestrator.service.runtime.nats_connection import connect
from orchestrator.service.runtime.nats_server import NatsServer
from orchestrator.service.runtime.settings import AgentBackend, AgentSettings, OrchestratorSettings
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.subjects import Role, Subjects
from orchestrator.subjects.permissions import EXECUTION_REPLY_INBOX

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
    """An event set by SIGINT or SIGTERM, already set if one arrived before the loop ran."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals.STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    if signals.received():
        stop.set()
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
    on_ready: Callable[[dict], Awaitable[None]] | None = None, *, any_embedded_port: bool = False,
) -> None:  # fmt: skip
    """The process: embedded nats-server (if no URL is set) around the asyncio service.

    Raises `StartupFailed` (one line for the user) when a part cannot start; `any_embedded_port`
    moves the embedded server to a free port when `ORCH_EMBEDDED_PORT` is taken.
    """
    server: NatsServer | None = None
    credentials: EmbeddedCredentials | None = None
    stops = contextlib.ExitStack()
    try:
        if settings.embedded:
            credentials = EmbeddedCredentials.generate()
            server = start_embedded(settings, credentials, stops, any_port=any_embedded_port)
            credentials.write(server.store_dir / CREDENTIALS_FILE, server.url)
            logger.info(
                "embedded nats-server at {} (JetStream in {}; this start's credentials in {})",
                server.url, server.store_dir, server.store_dir / CREDENTIALS_FILE,
            )  # fmt: skip
        servers = [server.url] if server else settings.nats_url
        asyncio.run(serve(settings, roles, servers, on_ready, credentials=credentials))
    finally:
        signals.install()  # the closed event loop gave the signals back to their defaults
        stops.close()


class Parts:
    """What `serve` has started so far; `stop` stops exactly that, in order, at any moment."""

    def __init__(self) -> None:
        self.nc: Client | None = None
        # The execution-reply and in-process agent connections, drained after the others.
        self.extra: list[Client] = []
        self.orchestrator: Orchestrator | None = None
        self.agent: ReferenceAgent | ExecutionService | None = None
        self.model: OpenAIBackend | None = None
        self.edge: Edge | None = None
        # One per process, shared by the orchestrator and the edge: readiness sees every loop.
        self.supervisor: Supervisor | None = None

    async def on_reconnect(self) -> None:
        if self.orchestrator is not None:
            await self.orchestrator.on_reconnect()
        if self.edge is not None:
            await self.edge.on_reconnect()

    async def stop(self, settings: OrchestratorSettings) -> None:
        if self.edge is not None:
            await self.edge.stop()
        if self.orchestrator is not None:
            await self.orchestrator.stop()
        if self.agent is not None:
            await self.agent.stop(settings.shutdown_grace)
        if self.model is not None:
            await self.model.close()
        if self.supervisor is not None:
            await self.supervisor.stop()
        for client in (*self.extra, *([self.nc] if self.nc is not None else [])):
            with contextlib.suppress(NatsError):
                await client.drain()


async def start_parts(
    parts: Parts, settings: OrchestratorSettings, roles: Roles, servers: list[str],
    telemetry: Telemetry, credentials: EmbeddedCredentials | None = None,
) -> None:  # fmt: skip
    """Connect, then start each part `roles` asks for, recording it in `parts` once it is up.

    Each part connects as its own role (own inbox prefix; with the embedded server, own user):
    the service and edge as the orchestrator (an edge alone as the edge), the orchestrator's
    execution requests on a second connection whose inbox is the only one execution services
    may answer to, and an in-process agent as an execution service.
    """
    subjects = Subjects(settings.subject_prefix)
    parts.supervisor = supervisor = Supervisor(settings)
    main_role = Role.ORCHESTRATOR if roles.service else Role.EDGE if roles.edge else Role.EXECUTION

    def login(role: Role) -> tuple[str, str] | None:
        return credentials.login(role) if credentials else None

    name = f"orchestrator-{settings.instance_id}"
    nc = await connect(
        settings, servers, name, on_reconnect=parts.on_reconnect, role=main_role,
        login=login(main_role),
    )  # fmt: skip
    parts.nc = nc
    if roles.service:
        execution_nc = await connect(
            settings, servers, f"{name}-execution", inbox=EXECUTION_REPLY_INBOX,
            login=login(Role.ORCHESTRATOR),
        )  # fmt: skip
        parts.extra.append(execution_nc)
        orchestrator = Orchestrator(
            nc, settings, telemetry, execution_nc=execution_nc, supervisor=supervisor
        )
        parts.orchestrator = orchestrator  # its stop() copes with a start() that did not finish
        await orchestrator.start()
    if roles.seed_demo:
        await seed_demo(nc, settings)
    if roles.agent:
        agent_nc = nc
        if main_role is not Role.EXECUTION:
            agent_nc = await connect(
                settings, servers, f"{name}-agent", role=Role.EXECUTION,
                login=login(Role.EXECUTION),
            )  # fmt: skip
            parts.extra.append(agent_nc)
        agent_settings = AgentSettings()
        if agent_settings.backend is AgentBackend.OPENAI:
            parts.model = model = OpenAIBackend(agent_settings)
            agent = ExecutionService(agent_nc, subjects, agent_settings.backend.value, model,
                                     agent_settings, telemetry)  # fmt: skip
        else:
            agent = ReferenceAgent(agent_nc, subjects, agent_settings, telemetry)
        await agent.start()
        parts.agent = agent
    if roles.edge:
        edge = Edge(
            settings, nc, subjects, telemetry=telemetry, dev_token_route=roles.dev_token_route,
            supervisor=supervisor,
        )  # fmt: skip
        parts.edge = edge  # its stop() releases a half-started listener
        await edge.start()


async def serve(
    settings: OrchestratorSettings, roles: Roles, servers: list[str],
    on_ready: Callable[[dict], Awaitable[None]] | None = None, stop: asyncio.Event | None = None,
    credentials: EmbeddedCredentials | None = None,
) -> None:  # fmt: skip
    """Run until `stop` (default: SIGINT/SIGTERM), then shut down cleanly.

    A stop during start-up (while waiting for NATS or JetStream, say) cancels the start and
    stops what was already up; a part that cannot start raises `StartupFailed` after the same.
    """
    stop = stop or stop_on_signals()
    telemetry = Telemetry.start(settings)
    parts = Parts()
    starting = asyncio.ensure_future(
        start_parts(parts, settings, roles, servers, telemetry, credentials)
    )
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # raises what made start-up fail
            if on_ready:
                info = {"nats_url": servers[0], "edge": parts.edge, "credentials": credentials}
                await on_ready(info)
            await stop.wait()
            logger.info("shutting down")
        else:
            logger.info("stopped during start-up")
    finally:
        stopped.cancel()
        starting.cancel()
        await asyncio.gather(starting, stopped, return_exceptions=True)
        await parts.stop(settings)
        await asyncio.to_thread(telemetry.shutdown)  # flushes spans and metrics
