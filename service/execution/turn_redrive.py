"""Re-drives session heads that make no progress: the safety net under the turn hand-offs.

A head turn is given its work item by the intake or by the worker that ended the turn before it
(service/execution/turn_dispatch.py). The one way the 3-node kill test lost such a hand-off (a turn
ending while a refused send's leftover blocked the next head) is closed there; this loop stays as
the net under any other, so that no acknowledged turn waits forever. Every instance looks at the
turn queues every `turn_redrive_interval` seconds: a head whose task is still `queued` with the
same dispatch count on two looks at least `turn_redrive_after` seconds apart gets a fresh work item
(a new dispatch id, so JetStream's de-duplication cannot swallow it). A surplus item is harmless:
the worker that loses the compare-and-set to `running` acknowledges it and does nothing.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger

from orchestrator.codecs.records import TaskStatus
from orchestrator.service.execution.turn_dispatch import TurnDispatcher
from orchestrator.service.runtime.supervisor import cancel_loops
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.kv import matching_keys
from orchestrator.service.store.stores import Stores
from orchestrator.service.store.turns import QUEUE_KEY_PATTERN, parse_queue_key


class TurnRedrive:
    """Looks for stalled session heads and gives each a fresh work item."""

    def __init__(self, wiring: Wiring, stores: Stores, dispatcher: TurnDispatcher) -> None:
        self._interval = wiring.settings.turn_redrive_interval
        self._after = wiring.settings.turn_redrive_after
        self._tasks = stores.tasks
        self._queues = stores.turns
        self._dispatcher = dispatcher
        self._supervisor = wiring.supervisor
        # task id -> (dispatch count, when first seen queued with it)
        self._seen: dict[str, tuple[int, float]] = {}
        self._task: asyncio.Task | None = None
        self.redriven = 0

    def start(self) -> None:
        self._task = self._supervisor.every("turn-redrive", self._interval, self.look)

    async def stop(self) -> None:
        if self._task:
            await cancel_loops({self._task})

    async def look(self) -> int:
        """One pass over every turn queue; returns how many heads got a fresh work item."""
        now = time.monotonic()
        seen: dict[str, tuple[int, float]] = {}
        redriven = 0
        for key in await matching_keys(self._queues.bucket.kv, QUEUE_KEY_PATTERN):
            owner = parse_queue_key(key)
            if owner is None:
                continue
            tenant_id, user_id = owner
            queue = await self._queues.read(tenant_id, user_id)
            heads = {}
            for turn in queue.turns:
                heads.setdefault(turn.session_id, turn)
            for head in heads.values():
                found = await self._tasks.find(tenant_id, user_id, head.task_id)
                if found is None or found.value.status is not TaskStatus.QUEUED:
                    continue  # running, paused, ended, or an intake still writing it
                task = found.value
                dispatches, since = self._seen.get(task.task_id, (task.dispatches, now))
                if dispatches != task.dispatches:
                    since = now
                if now - since < self._after:
                    seen[task.task_id] = (task.dispatches, since)
                    continue
                logger.warning(
                    "turn {} of session {} made no progress for {:.0f}s; re-driving it",
                    task.task_id, task.session_id, now - since,
                )  # fmt: skip
                await self._tasks.count_dispatch(task)
                again = await self._tasks.find(tenant_id, user_id, task.task_id)
                if again is not None and again.value.status is TaskStatus.QUEUED:
                    await self._dispatcher.publish(again.value)
                    redriven += 1
        self._seen = seen
        self.redriven += redriven
        return redriven
