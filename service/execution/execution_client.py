"""ExecutionClient: run a chat task on an execution service, attempt after attempt, to an outcome.

The interface the worker uses (and nothing else does):

    outcome = await client.run(task, agent, history=..., inputs=..., cancel=event,
                               first_attempt=client.first_attempt(delivery))

- `task` (ChatTask) gives the ids and the current message; `agent` the config that travels with
  the request; `history` the session's earlier turns (`HistoryStore.load`); `inputs` the
  questions this task asked and their answers.
- `cancel`: set it to stop the task; the execution service is told, what was received is stored,
  and the outcome is `cancelled` with that partial text.
- `first_attempt`: attempt numbers are never reused for a task, so the n-th delivery of a task
  (its n-th `running` move) starts at `(n - 1) * max_attempts + 1`; a re-run after a redelivery
  stores nothing twice and its events are told apart from the dead run's.
- The returned `ExecutionOutcome` has the status (completed, input_required, failed, timed_out,
  cancelled), the final attempt's number, its text (exactly the concatenated text of that
  attempt's stored `chat.chunk` events: the worker stores `chat.response` with that text), the
  `InputRequest` when input is required, and the error when it failed.

Each attempt is an `AttemptRunner.run` (it appends `task.status running attempt=n` first);
retryable failures (no responders, timeouts, silence, error codes in `RETRYABLE`) are retried
with exponential backoff and jitter, `execution_max_retries` times; attempt n is stopped and its
execution service told to cancel it before attempt n+1 starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from enum import StrEnum

from nats.errors import ConnectionClosedError, ConnectionDrainingError

from orchestrator.codecs.agent_configs import AgentConfig
from orchestrator.codecs.errors import (
    ActionTimeout,
    InternalError,
    OrchestratorError,
    Unavailable,
    UpstreamUnavailable,
    is_retryable,
)
from orchestrator.codecs.execution_messages import (
    ExecutionAgent,
    ExecutionRequest,
    HistoryTurn,
    InputRequest,
    InputRound,
    ResultStatus,
)
from orchestrator.codecs.records import ChatTask
from orchestrator.service.execution.attempt_runner import (
    AttemptRunner,
    AttemptSilent,
    AttemptTimedOut,
    NoResponders,
)
from orchestrator.service.execution.attempt_stream import DropCounts
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.event_log import EventLog


class OutcomeStatus(StrEnum):
    COMPLETED = "completed"
    INPUT_REQUIRED = "input_required"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ExecutionOutcome:
    """How a task's execution ended; `text` is the final attempt's stored chunk text."""

    status: OutcomeStatus
    attempt: int
    text: str = ""
    input: InputRequest | None = None
    error: OrchestratorError | None = None


def backoff_delay(
    retry: int, settings: OrchestratorSettings, rng: random.Random | random.SystemRandom
) -> float:
    """Seconds to wait before retry number `retry` (1-based): exponential, capped, half jittered."""
    base = settings.execution_backoff_initial * settings.execution_backoff_multiplier ** (retry - 1)
    capped = min(base, settings.execution_backoff_max)
    # "Equal jitter": at least half the delay, so retries never collapse onto each other or to 0.
    return capped / 2 + rng.uniform(0, capped / 2)


class ExecutionClient:
    """Runs tasks on execution services; knows attempts, timeouts and retries, not sessions."""

    def __init__(self, wiring: Wiring, events: EventLog, rng: random.Random | None = None) -> None:
        """`wiring.nc`: the connection whose inbox execution services may answer to."""
        self._subjects = wiring.subjects
        self._settings = wiring.settings
        self._rng = rng or random.SystemRandom()
        self._metrics = wiring.metrics
        self.dropped = DropCounts()
        self._runner = AttemptRunner(wiring, events, self.dropped)

    @property
    def max_attempts(self) -> int:
        return 1 + self._settings.execution_max_retries

    def first_attempt(self, delivery: int) -> int:
        """The first attempt number of a task's `delivery`-th run (1-based)."""
        return (max(delivery, 1) - 1) * self.max_attempts + 1

    def request(
        self,
        task: ChatTask,
        agent: AgentConfig,
        attempt: int,
        history: list[HistoryTurn],
        inputs: list[InputRound],
    ) -> ExecutionRequest:
        """The request of one attempt, with its own stream subject."""
        return ExecutionRequest(
            task_id=task.task_id, attempt=attempt, session_id=task.session_id,
            tenant_id=task.tenant_id, user_id=task.user_id, agent_id=task.agent_id,
            agent=ExecutionAgent.of(agent),
            content=task.content, history=history, inputs=inputs,
            stream_subject=self._runner.stream_subject(task.task_id, attempt),
            heartbeat_interval=self._settings.execution_heartbeat_interval,
        )  # fmt: skip

    async def run(
        self,
        task: ChatTask,
        agent: AgentConfig,
        *,
        history: list[HistoryTurn] | None = None,
        inputs: list[InputRound] | None = None,
        cancel: asyncio.Event | None = None,
        first_attempt: int = 1,
    ) -> ExecutionOutcome:
        """Attempts `first_attempt`, ... until one ends, a final error, or `cancel` is set."""
        cancel = cancel or asyncio.Event()
        error: OrchestratorError = InternalError("no attempt was made")
        attempt, text = first_attempt, ""
        for k in range(self.max_attempts):
            if k:
                self._metrics.execution_retry()
                await _sleep_unless(cancel, backoff_delay(k, self._settings, self._rng))
            if cancel.is_set():
                return ExecutionOutcome(OutcomeStatus.CANCELLED, attempt, text)
            attempt = first_attempt + k
            text = ""
            request = self.request(task, agent, attempt, history or [], inputs or [])
            try:
                end = await self._runner.run(request, cancel)
            except OrchestratorError as exc:
                error = exc
                if not is_retryable(error):
                    return ExecutionOutcome(OutcomeStatus.FAILED, attempt, error=error)
                continue
            except (ConnectionClosedError, ConnectionDrainingError) as exc:
                # Our own connection is closing: no attempt can be made or stored here.
                raise Unavailable(f"NATS connection is not usable: {exc}") from None
            if end.result is None:
                return ExecutionOutcome(OutcomeStatus.CANCELLED, attempt, end.text)
            if end.result.status is ResultStatus.INPUT_REQUIRED:
                return ExecutionOutcome(
                    OutcomeStatus.INPUT_REQUIRED, attempt, end.text, input=end.result.input
                )
            return ExecutionOutcome(OutcomeStatus.COMPLETED, attempt, end.text)
        return self._final(error, task.task_id, attempt)

    def _final(self, error: OrchestratorError, task_id: str, attempt: int) -> ExecutionOutcome:
        details = {"task_id": task_id, "attempts": self.max_attempts}
        if isinstance(error, AttemptSilent):
            timeout = self._settings.execution_heartbeat_timeout
            error = ActionTimeout(
                f"execution went silent for {timeout}s in each of {self.max_attempts} attempts",
                details,
            )
        elif isinstance(error, AttemptTimedOut):
            timeout = self._settings.execution_timeout
            error = ActionTimeout(
                f"execution got no reply within {timeout}s in {self.max_attempts} attempts",
                details,
            )
        elif isinstance(error, NoResponders):
            error = UpstreamUnavailable("no execution service is answering", details)
        if isinstance(error, ActionTimeout):
            return ExecutionOutcome(OutcomeStatus.TIMED_OUT, attempt, error=error)
        return ExecutionOutcome(OutcomeStatus.FAILED, attempt, error=error)

    async def cancel(self, task_id: str) -> None:
        """Tell every execution service instance to stop every attempt of `task_id`."""
        await self._runner.cancel(task_id)


async def _sleep_unless(cancel: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `cancel` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cancel.wait(), seconds)
