"""ExecutionClient: run a chat task on an execution service by request-reply, with retries."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.errors import ConnectionClosedError, ConnectionDrainingError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from orchestrator.codecs.errors import (
    TRANSPORT,
    ActionTimeout,
    ErrorBody,
    ErrorCode,
    ErrorEnvelope,
    InternalError,
    OrchestratorError,
    Unavailable,
    UpstreamUnavailable,
    ValidationFailed,
    error_from_body,
)
from orchestrator.codecs.execution_messages import (
    ExecutionCancel,
    ExecutionRequest,
    ExecutionResult,
)
from orchestrator.codecs.wire import decode, encode, format_of
from orchestrator.service.runtime.metrics import Metrics
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.subjects import Subjects

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"

# Codes that may succeed on another attempt (or on another instance of the service); every other
# code describes the request itself, so repeating it would fail the same way.
RETRYABLE = frozenset(
    {ErrorCode.UPSTREAM_UNAVAILABLE, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.INTERNAL}
)

RequestFactory = Callable[[int], ExecutionRequest]
RetryHook = Callable[[int, OrchestratorError], Awaitable[None]]


class _NoResponders(UpstreamUnavailable):
    """No execution service subscribed: retryable, reported as `UpstreamUnavailable`."""


class _AttemptTimedOut(ActionTimeout):
    """One attempt got no reply within `execution_timeout`."""


def is_retryable(error: OrchestratorError) -> bool:
    """Whether another attempt of the same request could succeed."""
    return error.code in RETRYABLE


def backoff_delay(
    retry: int, settings: OrchestratorSettings, rng: random.Random | random.SystemRandom
) -> float:
    """Seconds to wait before retry number `retry` (1-based): exponential, capped, half jittered."""
    base = settings.execution_backoff_initial * settings.execution_backoff_multiplier ** (retry - 1)
    capped = min(base, settings.execution_backoff_max)
    # "Equal jitter": at least half the delay, so retries never collapse onto each other or to 0.
    return capped / 2 + rng.uniform(0, capped / 2)


def error_of_reply(headers: dict[str, str] | None, data: bytes) -> OrchestratorError | None:
    """The typed error an execution reply carries, or None if it is not an error reply."""
    fmt = format_of(headers)
    status = (headers or {}).get(ERROR_CODE_HEADER)
    try:
        envelope = decode(data, ErrorEnvelope, fmt)
    except ValidationFailed:
        if not status:
            return None
        # A micro error without our envelope: rebuild the code from the status it carries.
        code = next(
            (c for c, m in TRANSPORT.items() if str(m.http_status) == status), ErrorCode.INTERNAL
        )
        message = (headers or {}).get(ERROR_HEADER) or f"execution service error {status}"
        return error_from_body(ErrorBody(code=code.value, message=message))
    return error_from_body(envelope.error)


class ExecutionClient:
    """Sends ExecutionRequests to `execution_run`; knows timeouts and retries, not sessions."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        settings: OrchestratorSettings,
        rng: random.Random | None = None,
        telemetry: Telemetry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._settings = settings
        self._rng = rng or random.SystemRandom()
        self._telemetry = telemetry or Telemetry(None, None)
        self._metrics = metrics

    @property
    def max_attempts(self) -> int:
        return 1 + self._settings.execution_max_retries

    async def run(
        self, request_factory: RequestFactory, *, on_retry: RetryHook | None = None
    ) -> ExecutionResult:
        """Run a task: attempts 1..max_attempts, each `request_factory(attempt)` with one task id.

        `on_retry(attempt, error)` is awaited before attempt 2, 3, ... (before its backoff sleep)
        with the number of the coming attempt and the error of the previous one; what it raises
        ends the run. Cancelling the awaiting task cancels the pending request at once.
        """
        task_id: str | None = None
        error: OrchestratorError = InternalError("no attempt was made")
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                if self._metrics is not None:
                    self._metrics.execution_retry()
                if on_retry is not None:
                    await on_retry(attempt, error)
                await asyncio.sleep(backoff_delay(attempt - 1, self._settings, self._rng))
            request = request_factory(attempt)
            if task_id is None:
                task_id = request.task_id
            elif request.task_id != task_id:
                # The task id is the service's idempotency key; a new one would run the task twice.
                raise ValueError(
                    f"request_factory changed task_id {task_id!r} -> {request.task_id!r}"
                )
            try:
                return await self._attempt(request)
            except OrchestratorError as exc:
                error = exc
            except (ConnectionClosedError, ConnectionDrainingError) as exc:
                # Our own connection is closing: no later attempt could be sent either.
                raise Unavailable(f"NATS connection is not usable: {exc}") from None
            if not is_retryable(error):
                raise error
        raise self._final(error, task_id or "")

    async def _attempt(self, request: ExecutionRequest) -> ExecutionResult:
        headers: dict[str, str] = {}
        attributes = {"task.id": request.task_id, "execution.attempt": request.attempt}
        started = time.perf_counter()
        try:
            with self._telemetry.client_span("execution.chat.run", headers, attributes=attributes):
                return await self._request(request, headers)
        except _AttemptTimedOut:
            if self._metrics is not None:
                self._metrics.execution_timeout()
            raise
        finally:
            if self._metrics is not None:
                self._metrics.execution_done("attempt", time.perf_counter() - started)

    async def _request(self, request: ExecutionRequest, headers: dict[str, str]) -> ExecutionResult:
        try:
            reply = await self._nc.request(
                self._subjects.execution_run,
                encode(request),
                timeout=self._settings.execution_timeout,
                headers=headers or None,
            )
        except NatsTimeout:
            raise _AttemptTimedOut("execution attempt timed out") from None
        except NoRespondersError:
            raise _NoResponders("no execution service is answering") from None
        failure = error_of_reply(reply.headers, reply.data)
        if failure is not None:
            raise failure
        try:
            result = decode(reply.data, ExecutionResult, format_of(reply.headers))
        except ValidationFailed as exc:
            raise InternalError(f"malformed execution reply: {exc.message}") from None
        if result.task_id != request.task_id:
            raise InternalError(f"reply for task {result.task_id!r}, not {request.task_id!r}")
        return result

    def _final(self, error: OrchestratorError, task_id: str) -> OrchestratorError:
        attempts = {"task_id": task_id, "attempts": self.max_attempts}
        if isinstance(error, _AttemptTimedOut):
            timeout = self._settings.execution_timeout
            return ActionTimeout(
                f"execution got no reply within {timeout}s in {self.max_attempts} attempts",
                attempts,
            )
        if isinstance(error, _NoResponders):
            return UpstreamUnavailable("no execution service is answering", attempts)
        return error

    async def cancel(self, task_id: str) -> None:
        """Tell every execution service instance to stop working on `task_id` (fire and forget)."""
        await self._nc.publish(
            self._subjects.execution_cancel, encode(ExecutionCancel(task_id=task_id))
        )
