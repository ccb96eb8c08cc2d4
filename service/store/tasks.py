"""Chat tasks in the `tasks` KV bucket, and the legal moves between their states."""

from __future__ import annotations

from datetime import datetime

from msgspec.structs import replace

from orchestrator.codecs.errors import ErrorBody, NotFound
from orchestrator.codecs.records import ChatTask, TaskStatus
from orchestrator.service.store.kv import TypedBucket, Versioned

_NEXT: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.QUEUED: frozenset(
        {TaskStatus.RUNNING, TaskStatus.CANCELLED, TaskStatus.FAILED, TaskStatus.TIMED_OUT}
    ),
    # running -> running: another instance took over a task whose owner died
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.RUNNING,
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.TIMED_OUT,
            TaskStatus.CANCELLED,
        }
    ),
}


def task_key(tenant_id: str, user_id: str, task_id: str) -> str:
    return f"{tenant_id}.{user_id}.{task_id}"


def transition(
    task: ChatTask,
    status: TaskStatus,
    now: datetime,
    *,
    owner: str | None = None,
    answer: str | None = None,
    error: ErrorBody | None = None,
) -> ChatTask | None:
    """The task moved to `status`, or None if that move is not allowed from where it is."""
    if status not in _NEXT.get(task.status, frozenset()):
        return None
    attempts = task.attempts + 1 if status is TaskStatus.RUNNING else task.attempts
    return replace(
        task,
        status=status,
        updated_at=now,
        attempts=attempts,
        owner=owner if owner is not None else task.owner,
        answer=answer,
        error=error,
    )


class TaskStore:
    """Tasks keyed `<tenant>.<user>.<task_id>`: a caller can only ever address its own."""

    def __init__(self, bucket: TypedBucket[ChatTask]) -> None:
        self.bucket = bucket

    async def create(self, task: ChatTask) -> int:
        return await self.bucket.create(task_key(task.tenant_id, task.user_id, task.task_id), task)

    async def find(self, tenant_id: str, user_id: str, task_id: str) -> Versioned[ChatTask] | None:
        return await self.bucket.get(task_key(tenant_id, user_id, task_id))

    async def get(self, tenant_id: str, user_id: str, task_id: str) -> Versioned[ChatTask]:
        found = await self.find(tenant_id, user_id, task_id)
        if found is None:
            raise NotFound(f"task {task_id} not found")
        return found

    async def move(
        self,
        task: ChatTask,
        status: TaskStatus,
        now: datetime,
        current: Versioned[ChatTask] | None = None,
        **changes,
    ) -> tuple[Versioned[ChatTask] | None, bool]:
        """Move a task under revision checks; returns (stored, whether this call moved it)."""
        moved = False

        def mutate(stored: ChatTask) -> ChatTask | None:
            nonlocal moved
            new = transition(stored, status, now, **changes)
            moved = new is not None
            return new

        key = task_key(task.tenant_id, task.user_id, task.task_id)
        stored = await self.bucket.update(key, mutate, current)
        return stored, moved
