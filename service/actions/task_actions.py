"""`task.get`, `task.cancel` and `task.respond`: reading, stopping and answering a turn."""

from __future__ import annotations

from orchestrator.codecs.actions import CancelTask, GetTask, RespondTask, TaskView, task_view
from orchestrator.codecs.errors import Conflict
from orchestrator.codecs.execution_messages import InputRound
from orchestrator.codecs.records import ChatTask, TaskStatus
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.execution.turn_dispatch import TurnDispatcher
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.ids import utcnow
from orchestrator.service.store.stores import Stores


class TaskActions:
    """Reads, cancels and answers the caller's tasks."""

    def __init__(self, wiring: Wiring, stores: Stores, dispatcher: TurnDispatcher) -> None:
        self._queues = stores.turns
        self._nc = wiring.nc
        self._subjects = wiring.subjects
        self._tasks = stores.tasks
        self._events = stores.task_events
        self._dispatcher = dispatcher

    async def get(self, ctx: ExecutionContext, payload: GetTask) -> TaskView:
        found = await self._tasks.get(ctx.tenant_id, ctx.user_id, payload.task_id)
        return task_view(found.value)

    async def cancel(self, ctx: ExecutionContext, payload: CancelTask) -> TaskView:
        """Cancel wherever the task is; `conflict` if it already ended."""
        stored = await self.stop(ctx, payload.task_id)
        if stored is None:
            found = await self._tasks.get(ctx.tenant_id, ctx.user_id, payload.task_id)
            raise Conflict(f"task {payload.task_id} already ended", {"status": found.value.status})
        return task_view(stored)

    async def stop(self, ctx: ExecutionContext, task_id: str) -> ChatTask | None:
        """Move the task to `cancelled`; None if it had already ended.

        A running task is stopped by the instance running it, which hears the cancel on the bus
        (or, if that message is lost, finds `cancelled` when it writes its result) and writes
        the partial answer and the `cancelled` status itself, so they are its last events. A
        task nobody runs gets its events here (and its turn ends here if it is the session's
        head); a crash before they are written is repaired when its work item reaches a worker.
        """
        found = await self._tasks.get(ctx.tenant_id, ctx.user_id, task_id)
        if found.value.status.terminal:
            return None
        stored, before = await self._tasks.cancel(found.value, utcnow(), found)
        if stored is None or before is None:
            return None
        task = stored.value
        if before is TaskStatus.RUNNING:
            await self._nc.publish(self._subjects.control_cancel(task_id), b"")
            return task
        await self._events.final(task)
        head = await self._queues.head(task.tenant_id, task.user_id, task.session_id)
        if head is not None and head.task_id == task_id:
            # Its work item may wait long (a paused task's is its input timer): end the turn now.
            await self._queues.remove(task.tenant_id, task.user_id, task_id)
            await self._dispatcher.kick(task.tenant_id, task.user_id, task.session_id, utcnow())
        return task

    async def respond(self, ctx: ExecutionContext, payload: RespondTask) -> TaskView:
        """Answer a task waiting in `input_required`; it runs again with the answer."""
        found = await self._tasks.get(ctx.tenant_id, ctx.user_id, payload.task_id)
        task = found.value
        if task.status is not TaskStatus.INPUT_REQUIRED or task.input is None:
            if (
                task.inputs
                and task.inputs[-1].response == payload.content
                and (task.status is TaskStatus.QUEUED)
            ):
                # A repeat of the answer that queued it: make sure it has its work item.
                await self._dispatcher.publish(task)
                return task_view(task)
            raise Conflict(
                f"task {payload.task_id} is not waiting for input", {"status": task.status}
            )
        now = utcnow()
        answered = InputRound(request=task.input, response=payload.content)
        stored, moved = await self._tasks.move(
            task, TaskStatus.QUEUED, now, found, answer=task.answer,
            inputs=[*task.inputs, answered], input=None, input_since=None,
        )  # fmt: skip
        if not moved or stored is None:
            status = stored.value.status if stored else task.status
            raise Conflict(f"task {payload.task_id} is not waiting for input", {"status": status})
        await self._events.status(stored.value, TaskStatus.QUEUED, now)
        await self._dispatcher.publish(stored.value)
        return task_view(stored.value)
