"""One attempt of one chat task on an execution service, from `task.status running` to its end.

1. Append `task.status running attempt=n`: clients discard the task's text of earlier attempts
   when they see it, and it is stored before anything of attempt n. This append, like the
   parts', rides out a leader election of the events stream (`EventLog.append_through_election`)
   instead of failing the attempt.
2. Subscribe the attempt's stream subject (`<p>.execution.stream.<task>.<n>.<nonce>`), then send
   the request on `execution_run` (request-reply, `ORCH_EXECUTION_TIMEOUT`).
3. While waiting for the reply, valid parts are stored (`AttemptStream`, `ChunkCoalescer`). No
   part or heartbeat for `ORCH_EXECUTION_HEARTBEAT_TIMEOUT` seconds abandons the attempt
   (retryable) long before the execution timeout: its agent died or lost its connection.
4. On a reply: wait (at most `ORCH_EXECUTION_PARTS_WAIT`) until the parts it counts are in, store
   the rest, and return. Missing parts fail the attempt (retryable): the answer would be cut.
   So does a message this instance dropped because it could not keep up (`StreamOverflow`, at
   once, when the subscription goes over `ORCH_EXECUTION_STREAM_PENDING_MSGS` / `_BYTES`).
5. On any failure: stop listening, let an append under way finish, and publish
   `ExecutionCancel(task, attempt=n)`, all before the caller may start attempt n+1; nothing of
   attempt n is stored after that.
6. On the cancel signal: stop listening, tell the execution service, store what was received
   and return `cancelled` with that text.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass

from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from orchestrator.codecs.errors import (
    ActionTimeout,
    InternalError,
    Unavailable,
    UpstreamUnavailable,
    ValidationFailed,
)
from orchestrator.codecs.events import TaskStatusChanged
from orchestrator.codecs.execution_messages import (
    ExecutionCancel,
    ExecutionRequest,
    ExecutionResult,
)
from orchestrator.codecs.records import TaskStatus
from orchestrator.codecs.transport import error_of_reply, format_of
from orchestrator.codecs.wire import decode, encode
from orchestrator.service.execution.attempt_stream import AttemptStream, DropCounts
from orchestrator.service.execution.coalescer import ChunkCoalescer
from orchestrator.service.runtime.nats_internals import on_slow_consumer
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.event_log import EventLog
from orchestrator.service.store.ids import utcnow


class NoResponders(UpstreamUnavailable):
    """No execution service subscribed: retryable, reported as `UpstreamUnavailable`."""


class AttemptTimedOut(ActionTimeout):
    """One attempt got no reply within `execution_timeout`."""


class AttemptSilent(ActionTimeout):
    """One attempt sent no part or heartbeat within `execution_heartbeat_timeout`."""


class PartsMissing(InternalError):
    """The reply counted parts that never arrived (core NATS lost them): retryable."""


class StreamOverflow(Unavailable):
    """This instance could not keep up with the attempt's stream (its subscription went over the
    pending limits and messages were dropped): retryable, never a truncated answer."""


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended without error: its result, or None when it was cancelled."""

    attempt: int
    result: ExecutionResult | None
    text: str


def new_nonce() -> str:
    """The unguessable last token of a stream subject: only the request carries it."""
    return secrets.token_urlsafe(12)


class AttemptRunner:
    """Runs single attempts; knows request-reply, the stream subject and liveness."""

    def __init__(self, wiring: Wiring, events: EventLog, drops: DropCounts) -> None:
        """`wiring.nc` is the connection execution services may answer to."""
        self._wiring = wiring
        self._nc = wiring.nc
        self._subjects = wiring.subjects
        self._settings = wiring.settings
        self._events = events
        self._telemetry = wiring.telemetry
        self._metrics = wiring.metrics
        self._drops = drops
        self._open: dict[Subscription, AttemptStream] = {}
        on_slow_consumer(wiring.nc, self._dropped_slow)

    def stream_subject(self, task_id: str, attempt: int) -> str:
        return self._subjects.execution_stream(task_id, attempt, new_nonce())

    async def run(self, request: ExecutionRequest, cancel: asyncio.Event) -> AttemptEnd:
        """Run attempt `request.attempt`; raises a typed error when it fails."""
        settings = self._settings
        await self._append_running(request)
        coalescer = ChunkCoalescer(self._events, request, settings)
        stream = AttemptStream(self._wiring, request, coalescer, self._drops)
        ended = False
        try:
            await stream.open()
            self._open[stream.subscription] = stream
            result = await self._exchange(request, stream, coalescer, cancel)
            await stream.close()
            await coalescer.close(flush=True)
            ended = True
            if coalescer.error is not None:
                raise Unavailable(f"could not store the answer: {coalescer.error}")
            return AttemptEnd(request.attempt, result, coalescer.stored_text)
        except asyncio.CancelledError:
            coalescer.abort()
            raise
        finally:
            self._open = {sub: s for sub, s in self._open.items() if s is not stream}
            if not ended:
                await stream.close()
                await coalescer.close(flush=False)
                with contextlib.suppress(NatsError):
                    await self.cancel(request.task_id, request.attempt)

    def _dropped_slow(self, sub: Subscription) -> bool:
        """nats-py dropped a message of `sub`; True if it is an attempt's stream of this runner."""
        stream = self._open.get(sub)
        if stream is None:
            return False
        stream.dropped_slow()
        return True

    async def cancel(self, task_id: str, attempt: int = 0) -> None:
        """Tell every execution service instance to stop `attempt` of a task (0: all of them)."""
        await self._nc.publish(
            self._subjects.execution_cancel,
            encode(ExecutionCancel(task_id=task_id, attempt=attempt)),
        )

    async def _append_running(self, request: ExecutionRequest) -> None:
        event = TaskStatusChanged(
            session_id=request.session_id, at=utcnow(), task_id=request.task_id,
            status=TaskStatus.RUNNING, attempt=request.attempt,
        )  # fmt: skip
        try:
            await self._events.append_through_election(
                event, f"{request.task_id}.status.running.{request.attempt}"
            )
        except NatsError as exc:
            raise Unavailable(f"could not store the attempt's start: {exc}") from None

    async def _exchange(
        self,
        request: ExecutionRequest,
        stream: AttemptStream,
        coalescer: ChunkCoalescer,
        cancel: asyncio.Event,
    ) -> ExecutionResult | None:
        headers: dict[str, str] = {}
        attributes = {"task.id": request.task_id, "execution.attempt": request.attempt}
        started = time.perf_counter()
        waits: set[asyncio.Task] = set()
        try:
            with self._telemetry.client_span("execution.chat.run", headers, attributes=attributes):
                reply = asyncio.create_task(
                    self._nc.request(
                        self._subjects.execution_run,
                        encode(request),
                        timeout=self._settings.execution_timeout,
                        headers=headers or None,
                    )
                )
                cancelled = asyncio.create_task(cancel.wait())
                broken = asyncio.create_task(coalescer.failed.wait())
                overflow = asyncio.create_task(stream.overflow.wait())
                waits = {reply, cancelled, broken, overflow}
                while not reply.done():
                    silence = stream.last_seen + self._settings.execution_heartbeat_timeout
                    left = silence - time.monotonic()
                    if left <= 0:
                        self._metrics.execution_silent()
                        raise AttemptSilent(
                            f"no part or heartbeat for "
                            f"{self._settings.execution_heartbeat_timeout}s"
                        )
                    await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                    if cancelled.done():
                        await stream.close()
                        await self.cancel(request.task_id, request.attempt)
                        return None
                    if broken.done():
                        raise Unavailable(f"could not store the answer: {coalescer.error}")
                    if overflow.done():
                        raise _overflow(stream)
                return await self._result(request, reply, stream)
        finally:
            for waiting in waits:
                waiting.cancel()
            self._metrics.execution_done("attempt", time.perf_counter() - started)

    async def _result(
        self, request: ExecutionRequest, reply: asyncio.Task, stream: AttemptStream
    ) -> ExecutionResult:
        try:
            msg = reply.result()
        except NatsTimeout:
            self._metrics.execution_timeout()
            raise AttemptTimedOut("execution attempt timed out") from None
        except NoRespondersError:
            raise NoResponders("no execution service is answering") from None
        failure = error_of_reply(msg.headers, msg.data)
        if failure is not None:
            raise failure
        try:
            result = decode(msg.data, ExecutionResult, format_of(msg.headers))
        except ValidationFailed as exc:
            raise InternalError(f"malformed execution reply: {exc.message}") from None
        if result.task_id != request.task_id or result.attempt not in (0, request.attempt):
            raise InternalError(
                f"reply for task {result.task_id!r} attempt {result.attempt}, "
                f"not {request.task_id!r} attempt {request.attempt}"
            )
        complete = not stream.overflow.is_set() and await stream.wait_for(
            result.parts, self._settings.execution_parts_wait
        )
        if stream.overflow.is_set():
            raise _overflow(stream)
        if not complete:
            raise PartsMissing(
                f"the reply counts {result.parts} parts, {stream.received} arrived",
                {"parts": result.parts, "received": stream.received},
            )
        return result


def _overflow(stream: AttemptStream) -> StreamOverflow:
    return StreamOverflow(
        "stream messages of the attempt were dropped: this instance could not keep up "
        "(ORCH_EXECUTION_STREAM_PENDING_MSGS / _BYTES)",
        {"received": stream.received},
    )
