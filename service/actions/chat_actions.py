"""`chat.send`: a user message becomes a turn of its session, durably and exactly once.

Intake writes, in this order: the send receipt (only when the caller chose an id), the turn in
the user's turn queue (the in-flight bound and the busy policy are decided there, atomically),
the `message.accepted` event, the work item if the turn is its session's head, and the task
record. Every step is idempotent for one task id, so a crash or a refused write anywhere leaves
either nothing a worker would run (a queued turn without a record or item is dropped after
`task_orphan_grace`) or a turn that will run (its item exists: the worker writes the record from
it), and a retry with the same id completes it; the reply comes only after all. A send refused
because its message could not be stored takes its own turn out of the queue at once, so it does
not hold its session for the grace.
"""

from __future__ import annotations

import contextlib

from loguru import logger
from nats.errors import Error as NatsError

from orchestrator.codecs.actions import ChatAccepted, SendChat
from orchestrator.codecs.agent_configs import BusyPolicy
from orchestrator.codecs.errors import (
    Conflict,
    NotFound,
    OrchestratorError,
    PayloadTooLarge,
    RateLimited,
)
from orchestrator.codecs.events import MessageAccepted
from orchestrator.codecs.records import ChatTask, QueuedTurn, SendReceipt, Session, TaskStatus
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.actions.session_actions import SessionActions
from orchestrator.service.actions.task_actions import TaskActions
from orchestrator.service.execution.turn_dispatch import TurnDispatcher
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.ids import new_id, utcnow
from orchestrator.service.store.stores import Stores
from orchestrator.service.store.turns import receipt_key


class ChatActions:
    """Turns a user message into a queued turn of its session."""

    def __init__(
        self,
        wiring: Wiring,
        stores: Stores,
        sessions: SessionActions,
        task_actions: TaskActions,
        dispatcher: TurnDispatcher,
    ) -> None:
        self._metrics = wiring.metrics
        self._max_content_bytes = wiring.settings.max_content_bytes
        self._sessions = sessions
        self._tasks = stores.tasks
        self._events = stores.events
        self._queues = stores.turns
        self._receipts = stores.receipts
        self._dispatcher = dispatcher
        self._task_actions = task_actions

    async def send(self, ctx: ExecutionContext, payload: SendChat) -> ChatAccepted:
        """Acknowledged only once the turn, its message event and its task record are stored."""
        limit = self._max_content_bytes
        if len(payload.content.encode()) > limit:
            raise PayloadTooLarge(f"message content over {limit} bytes (ORCH_MAX_CONTENT_BYTES)")
        found = await self._sessions.open_session(ctx, payload.session_id)
        session = found.value
        await self._sessions.check_agent(ctx, session.agent_id)
        config = await self._sessions.agents.get(session.agent_id)
        if config is None:
            raise NotFound(f"agent {session.agent_id} not found")
        now = utcnow()
        task_id = new_id()
        key = None
        if ctx.send_id:
            # A live receipt means this id was sent before: resume that send, never start another.
            key = receipt_key(ctx.tenant_id, ctx.user_id, session.session_id, ctx.send_id)
            receipt = SendReceipt(task_id=task_id, session_id=session.session_id, at=now)
            held = await self._receipts.claim(key, receipt, now)
            task_id, now = held.task_id, held.at
            existing = await self._tasks.find(ctx.tenant_id, ctx.user_id, task_id)
            if existing is not None:
                # Fully accepted before: make sure its turn can run, then answer the same.
                await self._dispatcher.kick(
                    ctx.tenant_id, ctx.user_id, session.session_id, utcnow()
                )
                return _accepted(existing.value)
        turn = QueuedTurn(task_id=task_id, session_id=session.session_id, at=now)
        try:
            earlier = await self._queues.reserve(ctx.tenant_id, ctx.user_id, turn, config.on_busy)
        except (RateLimited, Conflict) as exc:
            if isinstance(exc, RateLimited):
                self._metrics.rate_limited("tasks_in_flight")
            if key is not None:
                await self._receipts.release(key, task_id)
            raise
        user, sid = (ctx.tenant_id, ctx.user_id), session.session_id
        try:
            seq = await self._events.append(
                MessageAccepted(
                    session_id=sid, at=now, task_id=task_id, message_id=ctx.action_id,
                    content=payload.content,
                ),
                msg_id=f"{task_id}.accepted",
            )  # fmt: skip
        except (NatsError, OrchestratorError):
            await self._withdraw(*user, sid, task_id)
            raise
        task = _new_task(ctx, session, task_id, payload.content, now, seq)
        # The head's item goes out before the record (a worker writes the record from it), and
        # the queue is read again after the record: whichever of this intake and the worker
        # ending the turn before it comes second sees the other's write and publishes.
        published = await self._dispatcher.kick(*user, sid, utcnow(), own=task)
        try:
            await self._tasks.create(task)
        except Conflict:
            pass  # a worker (or a concurrent repeat of this send) stored it first
        if not published:
            await self._dispatcher.kick(*user, sid, utcnow(), own=task)
        await self._sessions.touch(ctx, found)
        if config.on_busy is BusyPolicy.INTERRUPT:
            for earlier_turn in earlier:
                # A turn whose intake never finished has no record: nothing to stop.
                with contextlib.suppress(NotFound):
                    await self._task_actions.stop(ctx, earlier_turn.task_id)
        return _accepted(task)

    async def _withdraw(self, tenant_id: str, user_id: str, session_id: str, task_id: str) -> None:
        """A send refused before its message was stored leaves no turn behind: its own turn
        leaves the queue at once (else it holds the session for `task_orphan_grace`), and a
        turn queued behind it that became the head gets its item.

        Best effort, during the same outage that refused the send: what fails here is dropped
        by the orphan grace as before. The send receipt stays, so a retry with the same id
        resumes this task (its message event, if the refused append did land, is de-duplicated).
        """
        try:
            await self._queues.remove(tenant_id, user_id, task_id)
            await self._dispatcher.kick(tenant_id, user_id, session_id, utcnow())
        except (NatsError, OrchestratorError) as exc:
            logger.warning("refused send {} left its turn queued: {!r}", task_id, exc)


def _new_task(
    ctx: ExecutionContext, session: Session, task_id: str, content: str, now, seq: int
) -> ChatTask:
    return ChatTask(
        task_id=task_id, session_id=session.session_id, tenant_id=ctx.tenant_id,
        user_id=ctx.user_id, agent_id=session.agent_id, content=content, created_at=now,
        updated_at=now, message_seq=seq, correlation_id=ctx.correlation_id,
    )  # fmt: skip


def _accepted(task: ChatTask) -> ChatAccepted:
    """The reply to a send and to every repeat of it: the status it had when accepted."""
    return ChatAccepted(
        task_id=task.task_id, session_id=task.session_id, status=TaskStatus.QUEUED,
        seq=task.message_seq,
    )  # fmt: skip
