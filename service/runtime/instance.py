"""One orchestrator instance, assembled from its parts: the object a test or the CLI starts."""

from __future__ import annotations

from loguru import logger
from nats.aio.client import Client

from orchestrator.service.actions.action_server import ActionServer, Handler
from orchestrator.service.actions.agent_actions import AgentActions
from orchestrator.service.actions.chat_actions import ChatActions
from orchestrator.service.actions.session_actions import SessionActions
from orchestrator.service.actions.task_actions import TaskActions
from orchestrator.service.execution.agent_directory import AgentDirectory
from orchestrator.service.execution.execution_client import ExecutionClient
from orchestrator.service.execution.sweeper import SessionSweeper
from orchestrator.service.execution.turn_dispatch import TurnDispatcher
from orchestrator.service.execution.turn_redrive import TurnRedrive
from orchestrator.service.execution.worker import TaskWorker
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.stores import Stores
from orchestrator.service.store.streams import ensure_resources
from orchestrator.service.webhooks.delivery import WebhookDelivery
from orchestrator.service.webhooks.outbox import WebhookOutbox


class Orchestrator:
    """The NATS side of the service: the micro service, the task worker and the expiry sweeper."""

    def __init__(
        self,
        nc: Client,
        settings: OrchestratorSettings,
        telemetry: Telemetry | None = None,
        *,
        execution_nc: Client | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        """`supervisor`: the process's (readiness sees every loop); `execution_nc`: see below."""
        self.wiring = wiring = Wiring.build(nc, settings, telemetry, supervisor)
        self.nc = nc
        # Execution requests and their parts: a connection whose inbox prefix is the one
        # execution services may answer to, so they can reach no other reply (default: `nc`).
        self.execution_nc = execution_nc or nc
        self.settings = settings
        self.subjects = wiring.subjects
        self.telemetry = wiring.telemetry
        self.supervisor = wiring.supervisor
        # Set by start() as each part is up: stop() may run before start() finished (a signal
        # during start-up, a failed start) and stops only what came up.
        self.agents: AgentDirectory | None = None
        self.worker: TaskWorker | None = None
        self.server: ActionServer | None = None
        self.sweeper: SessionSweeper | None = None
        self.redrive: TurnRedrive | None = None
        self.webhooks: WebhookDelivery | None = None

    async def start(self) -> None:
        wiring, settings, subjects = self.wiring, self.settings, self.subjects
        buckets = await ensure_resources(wiring.js, settings, subjects)
        agents = AgentDirectory(wiring, buckets.agent_configs)
        await agents.start()
        self.agents = agents
        webhooks_on = bool(settings.webhook_allowed_origins)
        outbox = WebhookOutbox(wiring, agents) if webhooks_on else None
        self.stores = stores = Stores.open(wiring, buckets, outbox)
        self.tasks, self.turns, self.history = stores.tasks, stores.turns, stores.history
        self.dispatcher = TurnDispatcher(wiring, stores)
        self.session_actions = SessionActions(wiring, stores, agents)
        self.task_actions = TaskActions(wiring, stores, self.dispatcher)
        self.chat_actions = ChatActions(
            wiring, stores, self.session_actions, self.task_actions, self.dispatcher
        )
        self.execution = ExecutionClient(wiring.on(self.execution_nc), stores.events)
        worker = TaskWorker(wiring, stores, self.dispatcher, agents, self.execution)
        await worker.start(self.supervisor)
        self.worker = worker
        if webhooks_on:
            self.webhooks = WebhookDelivery(wiring)
            await self.webhooks.start(self.supervisor)
        server = ActionServer(wiring, self._handlers(agents))
        await server.start()
        self.server = server
        self.sweeper = SessionSweeper(wiring, self.session_actions)
        self.sweeper.start()
        self.redrive = TurnRedrive(wiring, stores, self.dispatcher)
        self.redrive.start()
        logger.info(
            "orchestrator {} serving {} on NATS", settings.instance_id, subjects.actions_all
        )

    def _handlers(self, agents: AgentDirectory) -> dict[str, Handler]:
        s, c, t = self.session_actions, self.chat_actions, self.task_actions
        return {
            "session.start": s.start,
            "session.get": s.get,
            "session.list": s.list,
            "session.update": s.update,
            "session.close": s.close,
            "session.events": s.events_page,
            "chat.send": c.send,
            "task.get": t.get,
            "task.cancel": t.cancel,
            "task.respond": t.respond,
            "agent.list": AgentActions(agents).list,
        }

    async def on_reconnect(self) -> None:
        """NATS came back: rebuild what does not survive a server restart by itself."""
        if self.agents is not None:
            self.agents.rewatch()

    async def stop(self) -> None:
        """Drain: stop taking actions, let in-flight work finish, hand the rest back."""
        grace = self.settings.shutdown_grace
        if self.server is not None:
            await self.server.stop(grace)
        if self.worker is not None:
            await self.worker.stop(grace)
        if self.sweeper is not None:
            await self.sweeper.stop()
        if self.redrive is not None:
            await self.redrive.stop()
        if self.webhooks is not None:
            await self.webhooks.stop(grace)
        if self.agents is not None:
            await self.agents.stop()
        logger.info("orchestrator {} stopped", self.settings.instance_id)
