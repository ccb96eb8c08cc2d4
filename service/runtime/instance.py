"""One orchestrator instance, assembled from its parts: the object a test or the CLI starts."""

from __future__ import annotations

from loguru import logger
from nats.aio.client import Client

from orchestrator.codecs.records import ChatTask, SendReceipt, Session, TurnQueue
from orchestrator.codecs.session_history import SessionHistory
from orchestrator.service.actions.action_server import ActionServer
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
from orchestrator.service.store.event_log import EventLog
from orchestrator.service.store.history import HistoryStore
from orchestrator.service.store.kv import LeaderReads, TypedBucket
from orchestrator.service.store.session_slots import SessionSlots
from orchestrator.service.store.sessions import SessionStore
from orchestrator.service.store.streams import ensure_resources
from orchestrator.service.store.task_events import TaskEvents
from orchestrator.service.store.tasks import TaskStore
from orchestrator.service.store.turns import SendReceipts, TurnQueues
from orchestrator.service.webhooks.delivery import WebhookDelivery
from orchestrator.service.webhooks.outbox import WebhookOutbox
from orchestrator.subjects import Subjects


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
        self.nc = nc
        # Execution requests and their parts: a connection whose inbox prefix is the one
        # execution services may answer to, so they can reach no other reply (default: `nc`).
        self.execution_nc = execution_nc or nc
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self.telemetry = telemetry or Telemetry.off()
        self.metrics = self.telemetry.metrics
        self.js = nc.jetstream(timeout=settings.nats_request_timeout)
        # Set by start() as each part is up: stop() may run before start() finished (a signal
        # during start-up, a failed start) and stops only what came up.
        self.agents: AgentDirectory | None = None
        self.worker: TaskWorker | None = None
        self.server: ActionServer | None = None
        self.sweeper: SessionSweeper | None = None
        self.redrive: TurnRedrive | None = None
        self.webhooks: WebhookDelivery | None = None
        self.supervisor = supervisor or Supervisor(settings)

    async def start(self) -> None:
        settings, subjects = self.settings, self.subjects
        buckets = await ensure_resources(self.js, settings, subjects)
        retries, backoff = settings.kv_conflict_retries, settings.kv_conflict_backoff
        reads = LeaderReads.of(settings)
        self.events = EventLog(self.js, subjects, settings)
        self.sessions = SessionStore(
            TypedBucket(
                buckets.sessions, Session, retries, backoff, self._conflict("sessions"), reads
            ),
            settings,
        )
        self.tasks = TaskStore(
            TypedBucket(buckets.tasks, ChatTask, retries, backoff, self._conflict("tasks"), reads)
        )
        # Turn queues and send receipts live beside the tasks, under their own key shapes.
        self.turns = TurnQueues(
            TypedBucket(buckets.tasks, TurnQueue, retries, backoff, self._conflict("tasks"), reads),
            settings.max_inflight_tasks_per_user,
        )
        receipts = SendReceipts(
            TypedBucket(
                buckets.tasks, SendReceipt, retries, backoff, self._conflict("tasks"), reads
            ),
            settings.send_dedup_window,
        )
        agents = AgentDirectory(self.nc, buckets.agent_configs, subjects, settings, self.supervisor)
        await agents.start()
        self.agents = agents
        webhooks_on = bool(settings.webhook_allowed_origins)
        outbox = WebhookOutbox(self.js, subjects, settings, agents) if webhooks_on else None
        task_events = TaskEvents(self.events, outbox)
        self.history = HistoryStore(
            # Leader reads: the next turn's request must see the turn that just ended.
            TypedBucket(
                buckets.history, SessionHistory, retries, backoff, self._conflict("history"), reads
            ),
            settings,
        )
        self.dispatcher = TurnDispatcher(
            self.js, subjects, settings, self.tasks, self.turns, self.telemetry
        )
        slots = SessionSlots(self.js, buckets.session_slots, settings)
        self.session_actions = SessionActions(self.sessions, self.events, agents, settings, slots)
        self.task_actions = TaskActions(
            self.nc, subjects, self.tasks, task_events, self.turns, self.dispatcher
        )
        self.chat_actions = ChatActions(
            self.session_actions, self.tasks, self.events, self.turns, receipts,
            self.dispatcher, self.task_actions, self.metrics, settings.max_content_bytes,
        )  # fmt: skip
        self.execution = ExecutionClient(
            self.execution_nc, subjects, settings, self.events, telemetry=self.telemetry
        )
        worker = TaskWorker(
            self.nc, self.js, subjects, settings, self.tasks, task_events, self.turns,
            self.dispatcher, agents, self.execution, self.telemetry, self.history,
        )  # fmt: skip
        await worker.start(self.supervisor)
        self.worker = worker
        if webhooks_on:
            self.webhooks = WebhookDelivery(self.js, subjects, settings)
            await self.webhooks.start(self.supervisor)
        s, c, t = self.session_actions, self.chat_actions, self.task_actions
        server = ActionServer(
            self.nc,
            subjects,
            settings,
            {
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
            },
            self.telemetry,
            self.metrics,
        )
        await server.start()
        self.server = server
        self.sweeper = SessionSweeper(self.session_actions, settings, self.supervisor, self.metrics)
        self.sweeper.start()
        self.redrive = TurnRedrive(
            settings, self.tasks, self.turns, self.dispatcher, self.supervisor
        )
        self.redrive.start()
        logger.info(
            "orchestrator {} serving {} on NATS", settings.instance_id, subjects.actions_all
        )

    def _conflict(self, bucket: str):
        return lambda: self.metrics.kv_conflict(bucket)

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
