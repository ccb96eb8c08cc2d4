"""Work items for turns: only the head turn of a session has one on `CHAT_WORK`.

The work item of a task is published with `Nats-Msg-Id` = `<task_id>.work.<input round>`, so
publishing it twice within the stream's duplicate window stores it once; a later duplicate is
dropped by the worker (a running task remembers the stream sequence of the item that runs it).
That makes `kick` safe to call from anyone, any number of times.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from nats.js import JetStreamContext

from orchestrator.codecs.records import ChatTask, TaskStatus, WorkItem
from orchestrator.codecs.wire import encode
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.service.store.event_log import MSG_ID_HEADER
from orchestrator.service.store.tasks import TaskStore
from orchestrator.service.store.turns import TurnQueues
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

    async def kick(self, tenant_id: str, user_id: str, session_id: str, now: datetime) -> None:
        """Give the session's head turn its work item if it may need one.

        A head without a task record is being accepted right now (its intake publishes it once
        the record exists) or was abandoned by a crashed intake older than `task_orphan_grace`,
        which is dropped so the session moves on.
        """
        for _ in range(self._queues.limit + 1):
            head = await self._queues.head(tenant_id, user_id, session_id)
            if head is None:
                return
            found = await self._tasks.find(tenant_id, user_id, head.task_id)
            if found is None:
                if now - head.at < self._grace:
                    return
                await self._queues.remove(tenant_id, user_id, head.task_id)
                continue
            task = found.value
            if task.status is TaskStatus.QUEUED or task.status.terminal:
                await self.publish(task)
            return
