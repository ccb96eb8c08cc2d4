"""What the reference agent remembers per task id: finished answers (LRU) and work in flight."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from orchestrator.codecs.execution_messages import ExecutionResult


class TaskMemory:
    """De-duplicates executions by task id, so a retried request never runs a task twice.

    A finished task's result is kept in a bounded LRU; a task still running is one asyncio task
    that every request for the same id awaits. Failed or cancelled work is forgotten, so a later
    retry starts it again.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._done: OrderedDict[str, ExecutionResult] = OrderedDict()
        self._running: dict[str, asyncio.Task[ExecutionResult]] = {}
        self.executions = 0

    def finished(self, task_id: str) -> ExecutionResult | None:
        """The remembered result of a finished task, if any."""
        result = self._done.get(task_id)
        if result is not None:
            self._done.move_to_end(task_id)
        return result

    def work(
        self, task_id: str, start: Callable[[], Coroutine[Any, Any, ExecutionResult]]
    ) -> asyncio.Task[ExecutionResult]:
        """The in-flight work of `task_id`, started from `start()` if none is running."""
        running = self._running.get(task_id)
        if running is not None:
            return running
        self.executions += 1
        task = asyncio.create_task(start(), name=f"agent-work-{task_id}")
        self._running[task_id] = task
        task.add_done_callback(lambda t: self._settle(task_id, t))
        return task

    def cancel(self, task_id: str) -> bool:
        """Cancel the running work of `task_id`; False if there is none."""
        task = self._running.get(task_id)
        if task is None:
            return False
        task.cancel()
        return True

    def cancel_all(self) -> None:
        for task in list(self._running.values()):
            task.cancel()

    @property
    def running(self) -> list[asyncio.Task[ExecutionResult]]:
        return list(self._running.values())

    def _settle(self, task_id: str, task: asyncio.Task[ExecutionResult]) -> None:
        if self._running.get(task_id) is task:
            del self._running[task_id]
        if task.cancelled() or task.exception() is not None:
            return
        self._done[task_id] = task.result()
        self._done.move_to_end(task_id)
        while len(self._done) > self._capacity:
            self._done.popitem(last=False)
