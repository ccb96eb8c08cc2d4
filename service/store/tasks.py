"""Chat tasks in the `tasks` KV bucket, and the legal moves between their states."""

from __future__ import annotations

from datetime import datetime

from msgspec.structs import replace

from orchestrator.codecs.errors import ErrorBody, NotFound
from orchestrator.codecs.records import ChatTask, TaskStatus
from orchestrator.service.store.ids import owned_key
from orchestrator.service.store.kv import TypedBucket, Versioned

_ENDS = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED)
_NEXT: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.RUNNING, *_ENDS}),
    # running -> running: another instance took over a task whose owner died
    TaskStatus.RUNNING: frozenset({TaskStatus.RUNNING, TaskStatus.INPUT_REQUIRED, *_ENDS}),
    # input_required -> queued: the user answered; the task runs again with the answer
    TaskStatus.INPUT_REQUIRED: frozenset(
        {TaskStatus.QUEUED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT}
    ),
}


def transition(
    task: ChatTask,
    status: TaskStatus,
    now: datetime,
    *,
    owner: str | None = None,
    answer: str | None = None,
    error: ErrorBody | None = None,
    **changes,
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
        **changes,
    )


class TaskStore:
    """Tasks keyed `<tenant>.<user>.<task_id>`: a caller can only ever address its own."""

    def __init__(self, bucket: TypedBucket[ChatTask]) -> None:
        self.bucket = bucket

    async def create(self, task: ChatTask) -> int:
        return await self.bucket.create(owned_key(task.tenant_id, task.user_id, task.task_id), task)

    async def find(self, tenant_id: str, user_id: str, task_id: str) -> Versioned[ChatTask] | None:
        return await self.bucket.get(owned_key(tenant_id, user_id, task_id))

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

        key = owned_key(task.tenant_id, task.user_id, task.task_id)
        stored = await self.bucket.update(key, mutate, current)
        return stored, moved

    async def cancel(
        self, task: ChatTask, now: datetime, current: Versioned[ChatTask] | None = None
    ) -> tuple[Versioned[ChatTask] | None, TaskStatus | None]:
        """Cancel an unfinished task; returns (stored, the status it was cancelled from or None).

        A task paused for input keeps the text it had streamed as its (partial) answer.
        """
        before: TaskStatus | None = None

        def mutate(stored: ChatTask) -> ChatTask | None:
            nonlocal before
            answer = stored.answer if stored.status is TaskStatus.INPUT_REQUIRED else None
            new = transition(
                stored, TaskStatus.CANCELLED, now, answer=answer, input=None, input_since=None
            )
            before = stored.status if new is not None else None
            return new

        key = owned_key(task.tenant_id, task.user_id, task.task_id)
        stored = await self.bucket.update(key, mutate, current)
        return stored, before

    async def keep_partial(
        self, task: ChatTask, text: str, attempt: int = 0
    ) -> Versioned[ChatTask] | None:
        """Store the text a cancelled task had streamed as its answer (the runner knows it),
        and the attempt that streamed it."""

        def mutate(stored: ChatTask) -> ChatTask | None:
            if stored.status is not TaskStatus.CANCELLED or stored.answer is not None:
                return None
            return replace(stored, answer=text, attempt=attempt or stored.attempt)

        return await self.bucket.update(
            owned_key(task.tenant_id, task.user_id, task.task_id), mutate
        )

    async def count_dispatch(self, task: ChatTask) -> None:
        """Count a dropped work item of a queued task (see `ChatTask.dispatches`)."""

        def mutate(stored: ChatTask) -> ChatTask | None:
            if stored.status is not TaskStatus.QUEUED:
                return None
            return replace(stored, dispatches=stored.dispatches + 1)

        await self.bucket.update(owned_key(task.tenant_id, task.user_id, task.task_id), mutate)
