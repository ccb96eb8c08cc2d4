"""Work items for turns: only the head turn of a session has one on `CHAT_WORK`.

The work item of a task is published with `Nats-Msg-Id` = `<task_id>.work.<input round>`, so
publishing it twice within the stream's duplicate window stores it once; a later duplicate is
dropped by the worker (a running task remembers the stream sequence of the item that runs it).
That makes `kick` safe to call from anyone, any number of times.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from nats.js import JetStreamContext

from orchestrator.codecs.records import ChatTask, QueuedTurn, TaskStatus, WorkItem
from orchestrator.codecs.wire import encode
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.service.store.event_log import MSG_ID_HEADER
from orchestrator.service.store.tasks import TaskStore
from orchestrator.service.store.turns import TurnQueues, head_of
from orchestrator.subjects import Subjects


class TurnDispatcher:
    """Publishes the work item of a session's head turn."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        settings: OrchestratorSettings,
        tasks: TaskStore,
        queues: TurnQueues,
        telemetry: Telemetry,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._settings = settings
        self._tasks = tasks
        self._queues = queues
        self._telemetry = telemetry
        self._grace = timedelta(seconds=settings.task_orphan_grace)

    async def publish(self, task: ChatTask) -> None:
        """Put `task` on the work stream (stored once per input round, however often called)."""
        item = WorkItem(
            task_id=task.task_id, tenant_id=task.tenant_id, user_id=task.user_id,
            session_id=task.session_id, agent_id=task.agent_id, content=task.content,
            correlation_id=task.correlation_id or "",
        )  # fmt: skip
        msg_id = f"{task.task_id}.work.{len(task.inputs)}"
        await self._js.publish(
            self._subjects.work(task.tenant_id, task.user_id),
            encode(item),
            stream=self._settings.work_stream,
            headers=self._telemetry.inject({MSG_ID_HEADER: msg_id}),
        )

    async def kick(
        self,
        tenant_id: str,
        user_id: str,
        session_id: str,
        now: datetime,
        own: ChatTask | None = None,
    ) -> None:
        """Give the session's head turn its work item if it may need one.

        `own` is a task whose intake just stored its record: its turn is put back in the queue
        if it was dropped meanwhile. A head without a task record is being accepted right now
        (its intake publishes it once the record exists) or was abandoned by a crashed intake:
        once older than `task_orphan_grace` it is dropped so the session moves on. While it is
        younger, `own` gets its item anyway and the worker waits out the grace (one delayed
        redelivery), so a crashed intake never blocks the turns behind it for good.
        """
        for _ in range(self._queues.limit + 2):
            queue = await self._queues.read(tenant_id, user_id)
            if own is not None and all(t.task_id != own.task_id for t in queue.turns):
                turn = QueuedTurn(task_id=own.task_id, session_id=session_id, at=own.created_at)
                queue = await self._queues.ensure(tenant_id, user_id, turn)
            head = head_of(queue, session_id)
            if head is None:
                return
            found = await self._tasks.find(tenant_id, user_id, head.task_id)
            if found is None:
                if now - head.at < self._grace:
                    if own is not None:
                        await self.publish(own)
                    return
                await self._queues.remove(tenant_id, user_id, head.task_id)
                continue
            task = found.value
            if task.status is TaskStatus.QUEUED or task.status.terminal:
                await self.publish(task)
            return

    def orphan_wait(self, head: QueuedTurn, now: datetime) -> float:
        """Seconds until a head without a task record counts as abandoned (0: it does now)."""
        return max(0.0, (head.at + self._grace - now).total_seconds())
