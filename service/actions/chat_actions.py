"""Handlers of chat.send, task.get and task.cancel."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError

from orchestrator.codecs.actions import (
    CancelTask,
    ChatAccepted,
    GetTask,
    SendChat,
    TaskView,
    task_view,
)
from orchestrator.codecs.errors import Conflict, RateLimited
from orchestrator.codecs.events import MessageAccepted, TaskStatusChanged
from orchestrator.codecs.records import ChatTask, TaskStatus, WorkItem
from orchestrator.codecs.wire import encode
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.actions.session_actions import SessionActions
from orchestrator.service.runtime.metrics import Metrics
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.service.store.event_log import MSG_ID_HEADER, EventLog
from orchestrator.service.store.ids import new_id, utcnow
from orchestrator.service.store.tasks import TaskStore
from orchestrator.subjects import Subjects

# JetStream's answer when a subject is at its message limit and the stream discards new ones.
_JS_ERR_SUBJECT_AT_LIMIT = 10077


class ChatActions:
    """Turns a user message into a durable task; reads and cancels tasks."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        subjects: Subjects,
        settings: OrchestratorSettings,
        sessions: SessionActions,
        tasks: TaskStore,
        events: EventLog,
        telemetry: Telemetry,
        metrics: Metrics | None = None,
    ) -> None:
        self._telemetry = telemetry
        self._metrics = metrics
        self._nc = nc
        self._js = js
        self._subjects = subjects
        self._settings = settings
        self._sessions = sessions
        self._tasks = tasks
        self._events = events

    async def send(self, ctx: ExecutionContext, payload: SendChat) -> ChatAccepted:
        """Acknowledged only once the message event, the task and its work item are stored."""
        found = await self._sessions.open_session(ctx, payload.session_id)
        session = found.value
        await self._sessions.check_agent(ctx, session.agent_id)
        now = utcnow()
        task_id = new_id()
        item = WorkItem(
            task_id=task_id,
            tenant_id=ctx.tenant_id,
            user_id=ctx.user_id,
            session_id=session.session_id,
            agent_id=session.agent_id,
            content=payload.content,
            correlation_id=ctx.correlation_id,
        )
        # The work item goes first: the stream's per-user limit is the in-flight bound, so a
        # refused message changes nothing.
        try:
            await self._js.publish(
                self._subjects.work(ctx.tenant_id, ctx.user_id),
                encode(item),
                stream=self._settings.work_stream,
                headers=self._telemetry.inject({MSG_ID_HEADER: f"{task_id}.work"}),
            )
        except APIError as exc:
            if exc.err_code == _JS_ERR_SUBJECT_AT_LIMIT:
                if self._metrics is not None:
                    self._metrics.rate_limited("tasks_in_flight")
                raise RateLimited(
                    f"at most {self._settings.max_inflight_tasks_per_user} tasks in flight",
                    {"limit": self._settings.max_inflight_tasks_per_user},
                ) from None
            raise
        # The event precedes the task record: a worker waits for the record, so `message.accepted`
        # is always before the task's status events in the session stream.
        seq = await self._events.append(
            MessageAccepted(
                session_id=session.session_id,
                at=now,
                task_id=task_id,
                message_id=ctx.action_id,
                content=payload.content,
            ),
            msg_id=f"{task_id}.accepted",
        )
        await self._tasks.create(
            ChatTask(
                task_id=task_id,
                session_id=session.session_id,
                tenant_id=ctx.tenant_id,
                user_id=ctx.user_id,
                agent_id=session.agent_id,
                content=payload.content,
                created_at=now,
                updated_at=now,
                message_seq=seq,
                correlation_id=ctx.correlation_id,
            )
        )
        await self._sessions.touch(ctx, found)
        return ChatAccepted(
            task_id=task_id, session_id=session.session_id, status=TaskStatus.QUEUED, seq=seq
        )

    async def get(self, ctx: ExecutionContext, payload: GetTask) -> TaskView:
        found = await self._tasks.get(ctx.tenant_id, ctx.user_id, payload.task_id)
        return task_view(found.value)

    async def cancel(self, ctx: ExecutionContext, payload: CancelTask) -> TaskView:
        """Cancel wherever the task runs: the state moves here, the runner hears it on the bus."""
        found = await self._tasks.get(ctx.tenant_id, ctx.user_id, payload.task_id)
        if found.value.status.terminal:
            raise Conflict(f"task {payload.task_id} already ended", {"status": found.value.status})
        now = utcnow()
        stored, moved = await self._tasks.move(found.value, TaskStatus.CANCELLED, now, found)
        assert stored is not None
        if not moved:
            raise Conflict(f"task {payload.task_id} already ended", {"status": stored.value.status})
        await self._events.append(
            TaskStatusChanged(
                session_id=stored.value.session_id,
                at=now,
                task_id=payload.task_id,
                status=TaskStatus.CANCELLED,
                attempt=stored.value.attempts,
            ),
            msg_id=f"{payload.task_id}.status.cancelled",
        )
        await self._nc.publish(self._subjects.control_cancel(payload.task_id), b"")
        return task_view(stored.value)
