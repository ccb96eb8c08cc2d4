"""What an execution service remembers per key (task id, or task id and attempt): finished
results (LRU) and work in flight."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from orchestrator.codecs.execution_messages import ExecutionResult

Key = TypeVar("Key", bound=Hashable)


class TaskMemory(Generic[Key]):
    """De-duplicates executions by key, so a repeated request never runs the same work twice.

    A finished result is kept in a bounded LRU; work still running is one asyncio task that every
    request for the same key awaits. Failed or cancelled work is forgotten, so a later repeat
    starts it again.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._done: OrderedDict[Key, ExecutionResult] = OrderedDict()
        self._running: dict[Key, asyncio.Task[ExecutionResult]] = {}
        self.executions = 0

    def finished(self, key: Key) -> ExecutionResult | None:
        """The remembered result of finished work, if any."""
        result = self._done.get(key)
        if result is not None:
            self._done.move_to_end(key)
        return result

    def work(
        self, key: Key, start: Callable[[], Coroutine[Any, Any, ExecutionResult]]
    ) -> asyncio.Task[ExecutionResult]:
        """The in-flight work of `key`, started from `start()` if none is running."""
        running = self._running.get(key)
        if running is not None:
            return running
        self.executions += 1
        task = asyncio.create_task(start(), name=f"agent-work-{key}")
        self._running[key] = task
        task.add_done_callback(lambda t: self._settle(key, t))
        return task

    def cancel(self, key: Key) -> bool:
        """Cancel the running work of `key`; False if there is none."""
        task = self._running.get(key)
        if task is None:
            return False
        task.cancel()
        return True

    def cancel_where(self, matches: Callable[[Key], bool]) -> int:
        """Cancel the running work of every key `matches` accepts; how many were cancelled."""
        chosen = [task for key, task in self._running.items() if matches(key)]
        for task in chosen:
            task.cancel()
        return len(chosen)

    def cancel_all(self) -> None:
        for task in list(self._running.values()):
            task.cancel()

    @property
    def running(self) -> list[asyncio.Task[ExecutionResult]]:
        return list(self._running.values())

    def _settle(self, key: Key, task: asyncio.Task[ExecutionResult]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if task.cancelled() or task.exception() is not None:
            return
        self._done[key] = task.result()
        self._done.move_to_end(key)
        while len(self._done) > self._capacity:
            self._done.popitem(last=False)
