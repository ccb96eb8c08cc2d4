"""Work items for turns: only the head turn of a session has one on `CHAT_WORK`.

The work item of a task is published with `Nats-Msg-Id`
`<task_id>.work.<input round>.<dispatches>`, so publishing it twice within the stream's duplicate
window stores it once; a later duplicate is dropped by the worker (a running task remembers the
stream sequence of the item that runs it). That makes `kick` safe to call from anyone, any number
of times. An item of a task that is not its session's head (it waited behind a turn that looked
abandoned but was not) is dropped by the worker, which first counts the drop in the task's
`dispatches`, part of the de-dup id: the item published when the task does become head is then a
new one. So a PubAck marked `duplicate` is success: every way a worker settles the item of a queued
task either runs it (no longer queued) or counts the drop (a new id), so the stored copy of the same
id is still waiting for a worker, not consumed.

A publish refused or unanswered because the work stream has no leader (an election after a node
loss) is tried again with a growing wait, `work_publish_attempts` times in all, before it fails
(each try waits `work_publish_timeout` for its ack, not the client's 5 s default, so an item goes
out soon after the new leader is there): the worker ending a turn must not ack its item while the
next turn has none, and an intake must not store a record whose item is missing. Only a failure
past that budget propagates (the worker then leaves its item unacked, so JetStream redelivers it
and the kick is repeated).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from loguru import logger

from orchestrator.codecs.records import ChatTask, QueuedTurn, TaskStatus, WorkItem
from orchestrator.codecs.transport import MSG_ID_HEADER
from orchestrator.codecs.wire import encode
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.event_log import NO_LEADER
from orchestrator.service.store.stores import Stores
from orchestrator.service.store.turns import head_of


class TurnDispatcher:
    """Publishes the work item of a session's head turn."""

    def __init__(self, wiring: Wiring, stores: Stores) -> None:
        self._js = wiring.js
        self._subjects = wiring.subjects
        self._settings = wiring.settings
        self._tasks = stores.tasks
        self._queues = stores.turns
        self._telemetry = wiring.telemetry
        self._grace = timedelta(seconds=wiring.settings.task_orphan_grace)

    async def publish(self, task: ChatTask) -> None:
        """Put `task` on the work stream (stored once per input round and dispatch, however
        often called)."""
        item = WorkItem(
            task_id=task.task_id, tenant_id=task.tenant_id, user_id=task.user_id,
            session_id=task.session_id, agent_id=task.agent_id, content=task.content,
            correlation_id=task.correlation_id or "", message_seq=task.message_seq,
            created_at=task.created_at,
        )  # fmt: skip
        msg_id = f"{task.task_id}.work.{len(task.inputs)}.{task.dispatches}"
        payload = encode(item)
        settings = self._settings
        for attempt in range(settings.work_publish_attempts):
            try:
                await self._js.publish(
                    self._subjects.work(task.tenant_id, task.user_id),
                    payload,
                    timeout=settings.work_publish_timeout,
                    stream=settings.work_stream,
                    headers=self._telemetry.inject({MSG_ID_HEADER: msg_id}),
                )
                return
            except NO_LEADER as exc:
                if attempt == settings.work_publish_attempts - 1:
                    raise
                wait = min(
                    settings.work_publish_backoff_initial * 2**attempt,
                    settings.work_publish_backoff_max,
                )
                logger.warning(
                    "work item {} not stored ({}); trying again in {:.2f}s",
                    msg_id, type(exc).__name__, wait,
                )  # fmt: skip
                await asyncio.sleep(wait)

    async def kick(
        self,
        tenant_id: str,
        user_id: str,
        session_id: str,
        now: datetime,
        own: ChatTask | None = None,
    ) -> bool:
        """Give the session's head turn its work item if it may need one; True if it is `own`.

        `own` is the task an intake is accepting (its record may not be stored yet: the worker
        writes it from the item if need be); its turn is put back in the queue if it was dropped
        meanwhile. Another head without a task record is being accepted right now (its intake
        publishes it) or was abandoned by an intake that crashed or was refused: once older than
        `task_orphan_grace` it is dropped so the session moves on. While it is younger, `own`
        gets its item anyway and the worker waits out the grace (one delayed redelivery).
        """
        published, _ = await self._kick(tenant_id, user_id, session_id, now, own)
        return published

    async def hand_off(self, tenant_id: str, user_id: str, session_id: str, now: datetime) -> float:
        """The end of a turn: give the session's next head its work item, as `kick` does.

        Returns 0 when that is done (or the session has no turn left), else the seconds after
        which the caller must hand off again: the head is a turn without a task record, still
        inside its `task_orphan_grace`. Its intake may be writing it now, and then publishes it;
        but a send refused after queueing its turn (a write failed in a leader election) never
        comes back, and then nobody else would drop it and publish the real turn queued behind
        it. The worker keeps the ended turn's item as the timer (a delayed redelivery).
        """
        _, wait = await self._kick(tenant_id, user_id, session_id, now)
        return wait

    async def _kick(
        self,
        tenant_id: str,
        user_id: str,
        session_id: str,
        now: datetime,
        own: ChatTask | None = None,
    ) -> tuple[bool, float]:
        """(whether `own` was published as the head, seconds until a record-less head that
        blocks the session counts as abandoned: 0 if none does)."""
        for _ in range(self._queues.limit + 2):
            queue = await self._queues.read(tenant_id, user_id)
            if own is not None and all(t.task_id != own.task_id for t in queue.turns):
                stored = await self._tasks.find(tenant_id, user_id, own.task_id)
                if stored is not None and stored.value.status is not TaskStatus.QUEUED:
                    own = None  # it ran (and ended) already: nothing to put back
                else:
                    turn = QueuedTurn(task_id=own.task_id, session_id=session_id, at=own.created_at)
                    queue = await self._queues.ensure(tenant_id, user_id, turn)
            head = head_of(queue, session_id)
            if head is None:
                return False, 0.0
            if own is not None and head.task_id == own.task_id:
                await self.publish(own)
                return True, 0.0
            found = await self._tasks.find(tenant_id, user_id, head.task_id)
            if found is None:
                wait = self.orphan_wait(head, now)
                if wait > 0:
                    if own is not None:
                        await self.publish(own)
                    return False, wait
                await self._queues.remove(tenant_id, user_id, head.task_id)
                continue
            task = found.value
            if task.status is TaskStatus.QUEUED or task.status.terminal:
                await self.publish(task)
            return False, 0.0
        return False, self._grace.total_seconds()

    def orphan_wait(self, head: QueuedTurn, now: datetime) -> float:
        """Seconds until a head without a task record counts as abandoned (0: it does now)."""
        return max(0.0, (head.at + self._grace - now).total_seconds())
