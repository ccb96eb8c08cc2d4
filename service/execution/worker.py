"""The task worker: takes queued tasks from the work stream and sees each one to a final state.

Every instance pulls from one shared durable consumer. While a task runs its work item is kept
alive with in-progress acks; if the instance dies, JetStream redelivers the item after
`task_lease` seconds to another instance, which runs the task again (execution services
de-duplicate by task id, and every event carries a de-dup id), or fails it visibly once it has
been delivered `task_max_deliveries` times. No task stays `running` when its runner is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from orchestrator.codecs.errors import (
    ActionTimeout,
    Conflict,
    ErrorBody,
    InternalError,
    NotFound,
    OrchestratorError,
    ValidationFailed,
)
from orchestrator.codecs.events import ChatResponse, TaskStatusChanged
from orchestrator.codecs.execution_messages import ExecutionRequest
from orchestrator.codecs.records import ChatTask, TaskStatus, WorkItem
from orchestrator.codecs.wire import decode
from orchestrator.service.execution.agent_directory import AgentDirectory
from orchestrator.service.execution.execution_client import ExecutionClient
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.service.store.event_log import EventLog
from orchestrator.service.store.ids import utcnow
from orchestrator.service.store.kv import Versioned
from orchestrator.service.store.tasks import TaskStore
from orchestrator.subjects import Subjects

CONSUMER = "chat-workers"
# Waits (seconds) for a task record that is being written right now: the accepting instance writes
# it about a millisecond after the work item that a worker may already hold.
_RECORD_POLL = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032)


class TaskWorker:
    """Runs queued chat tasks, at most `task_concurrency` at a time on this instance."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        subjects: Subjects,
        settings: OrchestratorSettings,
        tasks: TaskStore,
        events: EventLog,
        agents: AgentDirectory,
        execution: ExecutionClient,
        telemetry: Telemetry,
    ) -> None:
        self._telemetry = telemetry
        self._orphan_grace = timedelta(seconds=settings.task_orphan_grace)
        self._nc = nc
        self._js = js
        self._subjects = subjects
        self._settings = settings
        self._tasks = tasks
        self._events = events
        self._agents = agents
        self._execution = execution
        self._slots = asyncio.Semaphore(settings.task_concurrency)
        self._running: dict[str, asyncio.Task] = {}
        self._inflight: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._cancel_sub = None

    @property
    def running(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        config = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._settings.task_lease,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=-1,  # delivery counting is ours, so a give-up is a visible failure
            max_ack_pending=-1,
            filter_subject=self._subjects.work_all,
        )
        self._psub = await self._js.pull_subscribe(
            self._subjects.work_all,
            durable=CONSUMER,
            stream=self._settings.work_stream,
            config=config,
        )
        self._cancel_sub = await self._nc.subscribe(
            self._subjects.control_cancel_all, cb=self._on_cancel
        )
        self._loop_task = asyncio.create_task(self._pull_forever(), name="task-worker")

    async def stop(self, grace: float) -> None:
        """Stop pulling; give running tasks `grace` seconds, then hand them back unacknowledged."""
        self._stopping.set()
        if self._cancel_sub:
            with contextlib.suppress(NatsError):
                await self._cancel_sub.unsubscribe()
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        with contextlib.suppress(NatsError):
            await self._psub.unsubscribe()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()  # not acked: JetStream redelivers it to another instance
            await asyncio.gather(*pending, return_exceptions=True)

    async def _pull_forever(self) -> None:
        while not self._stopping.is_set():
            # Take one free slot (waiting if none), then as many more as are free right now, and
            # fetch that many items in one pull.
            await self._slots.acquire()
            batch = 1
            while batch < self._settings.task_fetch_batch and not self._slots.locked():
                await self._slots.acquire()
                batch += 1
            try:
                msgs = await self._psub.fetch(batch, timeout=self._settings.task_fetch_wait)
            except (TimeoutError, NatsTimeout):
                msgs = []
            except NatsError as exc:
                msgs = []
                logger.warning("work fetch failed: {}", exc)
                await asyncio.sleep(self._settings.nats_reconnect_wait)
            for _ in range(batch - len(msgs)):
                self._slots.release()
            for msg in msgs:
                task = asyncio.create_task(self._process(msg))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _on_cancel(self, msg: Msg) -> None:
        task_id = self._subjects.task_of_control_cancel(msg.subject)
        running = self._running.get(task_id)
        if running is not None:
            running.cancel()
            await self._execution.cancel(task_id)

    async def _process(self, msg: Msg) -> None:
        try:
            with self._telemetry.span_for_action("task.run", msg.headers):
                await self._handle(msg)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - outermost boundary of one task's processing
            logger.exception("task processing failed; JetStream will redeliver it")
        finally:
            self._slots.release()

    async def _handle(self, msg: Msg) -> None:
        try:
            item = decode(msg.data, WorkItem)
        except ValidationFailed as exc:
            logger.error("malformed work item dropped: {}", exc.message)
            await msg.term()
            return
        found = await self._await_record(item)
        if found is None:
            if utcnow() - msg.metadata.timestamp < self._orphan_grace:
                await msg.nak(delay=_RECORD_POLL[-1])  # the accepting instance is still writing
                return
            found = await self._adopt_orphan(item)
        task = found.value
        if task.status.terminal:
            await self._ensure_final_events(task)
            await msg.ack()
            return
        if msg.metadata.num_delivered > self._settings.task_max_deliveries:
            await self._finish(
                found,
                TaskStatus.FAILED,
                error=InternalError(
                    f"gave up after {self._settings.task_max_deliveries} deliveries"
                ).body(),
            )
            await msg.ack()
            return
        await self._run(msg, found)

    async def _await_record(self, item: WorkItem):
        """The task record; `chat.send` writes it a moment after the work item, so wait briefly."""
        for delay in (0.0, *_RECORD_POLL):
            if delay:
                await asyncio.sleep(delay)
            found = await self._tasks.find(item.tenant_id, item.user_id, item.task_id)
            if found is not None:
                return found
        return None

    async def _adopt_orphan(self, item: WorkItem):
        """A work item whose task record was never written: the accepting instance died."""
        now = utcnow()
        task = ChatTask(
            task_id=item.task_id, session_id=item.session_id, tenant_id=item.tenant_id,
            user_id=item.user_id, agent_id=item.agent_id, content=item.content,
            created_at=now, updated_at=now, correlation_id=item.correlation_id,
        )  # fmt: skip
        with contextlib.suppress(Conflict):
            await self._tasks.create(task)
        return await self._tasks.get(item.tenant_id, item.user_id, item.task_id)

    async def _run(self, msg: Msg, found: Versioned[ChatTask]) -> None:
        # Every write below is compare-and-set on the revision just written, so a concurrent
        # cancel is seen (and re-read) only when it happened, with no read before each write.
        now = utcnow()
        stored, moved = await self._tasks.move(
            found.value, TaskStatus.RUNNING, now, found, owner=self._settings.instance_id
        )
        if not moved or stored is None:
            await msg.ack()  # cancelled or finished meanwhile
            return
        task = stored.value
        await self._status_event(task, TaskStatus.RUNNING, now)
        config = await self._agents.get(task.agent_id)
        if config is None:
            await self._finish(
                stored, TaskStatus.FAILED, error=NotFound(f"agent {task.agent_id} not found").body()
            )
            await msg.ack()
            return

        def request(attempt: int) -> ExecutionRequest:
            return ExecutionRequest(
                task_id=task.task_id, session_id=task.session_id, tenant_id=task.tenant_id,
                user_id=task.user_id, agent_id=task.agent_id, agent=config, content=task.content,
                attempt=attempt, events_subject=self._subjects.session_events(task.session_id),
            )  # fmt: skip

        keepalive = asyncio.create_task(self._keep_alive(msg))
        current = asyncio.current_task()
        assert current is not None
        self._running[task.task_id] = current
        try:
            result = await self._execution.run(request)
            await self._finish(stored, TaskStatus.COMPLETED, answer=result.content)
        except ActionTimeout as exc:
            await self._finish(stored, TaskStatus.TIMED_OUT, error=exc.body())
        except OrchestratorError as exc:
            await self._finish(stored, TaskStatus.FAILED, error=exc.body())
        except asyncio.CancelledError:
            if self._stopping.is_set():
                raise  # shutting down: leave it unacked for another instance
            current.uncancel()  # cancelled through task.cancel: the state is already `cancelled`
        finally:
            self._running.pop(task.task_id, None)
            keepalive.cancel()
        await msg.ack()

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._settings.task_lease / 3)
            with contextlib.suppress(NatsError):
                await msg.in_progress()

    async def _finish(
        self, current: Versioned[ChatTask], status: TaskStatus, *, answer: str | None = None,
        error: ErrorBody | None = None,
    ) -> None:  # fmt: skip
        now = utcnow()
        stored, moved = await self._tasks.move(
            current.value, status, now, current, answer=answer, error=error
        )
        if moved and stored is not None:
            await self._ensure_final_events(stored.value)

    async def _ensure_final_events(self, task: ChatTask) -> None:
        """Append the terminal events; de-dup ids make this safe to repeat after a crash."""
        if task.status is TaskStatus.COMPLETED and task.answer is not None:
            await self._events.append(
                ChatResponse(
                    session_id=task.session_id, at=task.updated_at, task_id=task.task_id,
                    content=task.answer,
                ),
                msg_id=f"{task.task_id}.response",
            )  # fmt: skip
        await self._status_event(task, task.status, task.updated_at, task.error)

    async def _status_event(self, task: ChatTask, status: TaskStatus, at, error=None) -> None:
        await self._events.append(
            TaskStatusChanged(
                session_id=task.session_id, at=at, task_id=task.task_id, status=status,
                attempt=task.attempts, error=error,
            ),
            msg_id=f"{task.task_id}.status.{status.value}.{task.attempts}"
            if status is TaskStatus.RUNNING
            else f"{task.task_id}.status.{status.value}",
        )  # fmt: skip
