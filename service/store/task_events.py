"""The events a task's state changes emit, each with a de-dup id so writing one twice is harmless.

Whoever moves a task writes its event right after; whoever finds a task whose event may be missing
(a redelivered work item of a finished task, a retried action) writes it again. So a crash between
the two writes delays the event, and never loses it or writes it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from orchestrator.codecs.errors import ErrorBody
from orchestrator.codecs.events import ChatResponse, TaskStatusChanged
from orchestrator.codecs.records import ChatTask, TaskStatus
from orchestrator.service.store.event_log import EventLog


@dataclass(frozen=True)
class StatusWritten:
    """A `task.status` event just written, with its de-dup id."""

    task: ChatTask
    status: TaskStatus
    at: datetime
    error: ErrorBody | None
    event_id: str


class StatusListener(Protocol):
    """Told of every `task.status` written (e.g. webhooks)."""

    async def task_changed(self, change: StatusWritten) -> None: ...


class NoListener:
    """A listener that does nothing."""

    async def task_changed(self, change: StatusWritten) -> None:
        return None


class TaskEvents:
    """Appends `task.status` and `chat.response` events for tasks."""

    def __init__(self, events: EventLog, listener: StatusListener | None = None) -> None:
        self.log = events
        self._listener = listener or NoListener()

    async def status(
        self, task: ChatTask, status: TaskStatus, at: datetime, error: ErrorBody | None = None
    ) -> int:
        """One `task.status`; its de-dup id names the status and the attempt or input round."""
        match status:
            case TaskStatus.RUNNING:
                msg_id = f"{task.task_id}.status.running.{task.attempts}"
            case TaskStatus.QUEUED | TaskStatus.INPUT_REQUIRED:
                msg_id = f"{task.task_id}.status.{status.value}.{len(task.inputs)}"
            case _:
                msg_id = f"{task.task_id}.status.{status.value}"
        event = TaskStatusChanged(
            session_id=task.session_id, at=at, task_id=task.task_id, status=status,
            attempt=task.attempt, error=error,
            input=task.input if status is TaskStatus.INPUT_REQUIRED else None,
        )  # fmt: skip
        seq = await self.log.append(event, msg_id=msg_id)
        # After the event: writing the event again (a repair) tells the listener again too.
        await self._listener.task_changed(StatusWritten(task, status, at, error, msg_id))
        return seq

    async def final(self, task: ChatTask) -> None:
        """A finished task's events: its answer (partial when cancelled), then its status.

        Nothing of the task is written after these: the status is the task's last event.
        """
        if task.status is TaskStatus.COMPLETED or task.status is TaskStatus.CANCELLED:
            await self.log.append(
                ChatResponse(
                    session_id=task.session_id, at=task.updated_at, task_id=task.task_id,
                    content=task.answer or "", attempt=task.attempt,
                    partial=task.status is TaskStatus.CANCELLED,
                ),
                msg_id=f"{task.task_id}.response",
            )  # fmt: skip
        await self.status(task, task.status, task.updated_at, task.error)
