"""How a turn ends: its final state and events, its history, and the hand-off to the next turn.

When a run ends (or a redelivered item finds its task finished) the worker calls `TurnEnd`, which
(1) writes the task's final state and its events and records the turn in the session's history,
(2) takes the turn out of its user's turn queue, (3) publishes the work item of the session's next
turn; then the worker (4) acks the item. A redelivered item of a finished task repeats only (1)'s
events and (2)-(4), all idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.codecs.errors import ErrorBody, InternalError
from orchestrator.codecs.execution_messages import InputRequest
from orchestrator.codecs.records import ChatTask, TaskStatus
from orchestrator.service.execution.execution_client import ExecutionOutcome, OutcomeStatus
from orchestrator.service.execution.turn_dispatch import TurnDispatcher
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.ids import utcnow
from orchestrator.service.store.kv import Versioned
from orchestrator.service.store.stores import Stores


@dataclass
class TurnOutcome:
    """How one run of a task ended: the status to store, its text so far, and why."""

    status: TaskStatus
    text: str = ""
    error: ErrorBody | None = None
    input: InputRequest | None = None
    attempt: int = 0

    @classmethod
    def of(cls, outcome: ExecutionOutcome) -> TurnOutcome:
        """The outcome of the execution client's run, as the task status to store."""
        error = outcome.error.body() if outcome.error is not None else None
        status = _STATUS[outcome.status]
        if status is TaskStatus.INPUT_REQUIRED and outcome.input is None:
            status, error = TaskStatus.FAILED, InternalError("input_required without a question")
            error = error.body()
        return cls(status, outcome.text, error, outcome.input, outcome.attempt)


class TurnEnd:
    """Stores how a run ended and ends the turn; knows the task, its events and the turn queue."""

    def __init__(
        self, stores: Stores, dispatcher: TurnDispatcher, settings: OrchestratorSettings
    ) -> None:
        self._tasks = stores.tasks
        self._events = stores.task_events
        self._history = stores.history
        self._queues = stores.turns
        self._dispatcher = dispatcher
        self._settings = settings

    async def finish(self, current: Versioned[ChatTask], outcome: TurnOutcome) -> float:
        """Store how the run ended and emit its events; returns when the item must come back
        (the worker naks it with that delay): the input timeout of a task now waiting for
        input, the wait of a hand-off not done yet, or 0."""
        now = utcnow()
        if outcome.status is TaskStatus.INPUT_REQUIRED:
            stored, moved = await self._tasks.move(
                current.value, TaskStatus.INPUT_REQUIRED, now, current,
                answer=outcome.text, input=outcome.input, input_since=now,
                attempt=outcome.attempt,
            )  # fmt: skip
            if moved and stored is not None:
                await self._events.status(stored.value, TaskStatus.INPUT_REQUIRED, now)
                return self._settings.input_timeout
        elif outcome.status is not TaskStatus.CANCELLED:
            stored, moved = await self._tasks.move(
                current.value, outcome.status, now, current,
                answer=outcome.text if outcome.status is TaskStatus.COMPLETED else None,
                error=outcome.error, attempt=outcome.attempt,
            )  # fmt: skip
            if moved and stored is not None:
                return await self.end_turn(stored.value)
        # Cancelled by `task.cancel` (before or while this run ended): the text streamed so far
        # becomes the answer, marked partial.
        stored = await self._tasks.keep_partial(current.value, outcome.text, outcome.attempt)
        if stored is not None and stored.value.status.terminal:
            return await self.end_turn(stored.value)
        return 0.0

    async def end_turn(self, task: ChatTask) -> float:
        """(1) the final events and the turn's history, (2) out of the turn queue, (3) the next
        turn's work item. Returns 0, or the seconds after which (3) must be tried again (the
        item of the ended turn is kept and redelivered then: see `TurnDispatcher.hand_off`)."""
        await self._events.final(task)
        if task.attempts:  # a task cancelled before it ever ran reached no agent
            answer = task.answer if task.status in _ANSWERED else None
            await self._history.record_turn(
                task.tenant_id, task.user_id, task.session_id, task.task_id, task.content,
                answer, partial=task.status is TaskStatus.CANCELLED,
            )  # fmt: skip
        await self._queues.remove(task.tenant_id, task.user_id, task.task_id)
        return await self._dispatcher.hand_off(
            task.tenant_id, task.user_id, task.session_id, utcnow()
        )


_STATUS = {
    OutcomeStatus.COMPLETED: TaskStatus.COMPLETED,
    OutcomeStatus.INPUT_REQUIRED: TaskStatus.INPUT_REQUIRED,
    OutcomeStatus.FAILED: TaskStatus.FAILED,
    OutcomeStatus.TIMED_OUT: TaskStatus.TIMED_OUT,
    OutcomeStatus.CANCELLED: TaskStatus.CANCELLED,
}
# What a finished task's answer is worth remembering for (a cancelled one's is partial).
_ANSWERED = frozenset({TaskStatus.COMPLETED, TaskStatus.CANCELLED})
