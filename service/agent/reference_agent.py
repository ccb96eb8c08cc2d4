"""The reference execution service: a deterministic agent that shows the execution contract.

Anyone writing an execution service implements what this module does:

1. Request. Serve `<prefix>.execution.chat.run` in queue group `execution` (one instance gets each
   attempt). The body is an `ExecutionRequest` (JSON, or MessagePack if `Content-Type` says so).
   `task_id` is the idempotency key: every retry of a task carries the same one, with `attempt`
   counting from 1.
2. Chunk events. Before replying, publish each part of the answer as a `ChatChunk` event
   (`type: chat.chunk`, `index` from 0) to `request.events_subject` through JetStream, awaiting the
   ack so it is stored, with header `Nats-Msg-Id: <task_id>.chunk.<index>`. The events stream
   drops a repeated id within its duplicate window, so a retried attempt (here or on another
   instance) never stores a chunk twice, provided it produces the same chunks.
3. Reply. An `ExecutionResult(task_id, content=<full answer>, chunks=<count>)` in the request's
   format, within the orchestrator's per-attempt timeout (`ORCH_EXECUTION_TIMEOUT`).
4. Errors. Reply an `ErrorEnvelope` (`{"error": {"code", "message"}}`) with the NATS micro headers
   `Nats-Service-Error: <message>` and `Nats-Service-Error-Code: <HTTP status>`. The orchestrator
   retries `upstream_unavailable`, `unavailable`, `timeout` and `internal`; a malformed request
   gets `validation_error`, which is final.
5. De-duplication. A retry of a finished task gets the remembered answer without streaming again;
   a retry arriving while the task still runs waits for that same run (`TaskMemory`).
6. Cancel. `<prefix>.execution.chat.cancel` carries an `ExecutionCancel`; every instance hears it.
   The orchestrator has stopped waiting, so the running work is stopped and nothing is replied.

Faults for tests (`ORCH_AGENT_*`): `delay` sleeps before answering; `fail_first=N` fails attempts
whose `request.attempt <= N` (the attempt the orchestrator sends, so it holds across instances);
`fail_always` fails every attempt. Injected failures are `upstream_unavailable` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.api import Header
from opentelemetry.trace import SpanKind

from orchestrator.codecs.errors import (
    InternalError,
    OrchestratorError,
    Unavailable,
    UpstreamUnavailable,
    ValidationFailed,
    transport_for,
)
from orchestrator.codecs.events import ChatChunk
from orchestrator.codecs.execution_messages import (
    ExecutionCancel,
    ExecutionRequest,
    ExecutionResult,
)
from orchestrator.codecs.wire import CONTENT_TYPE_HEADER, WireFormat, decode, encode, format_of
from orchestrator.service.agent.demo_answer import answer_for, split_answer
from orchestrator.service.agent.task_memory import TaskMemory
from orchestrator.service.execution.execution_client import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
)
from orchestrator.service.runtime.settings import AgentSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.subjects import SubjectError, Subjects

QUEUE_GROUP = "execution"


@dataclass
class AgentStats:
    """Counters for operators and tests: what the agent saw and did."""

    requests: int = 0
    replies: int = 0
    errors: int = 0
    cancelled: int = 0


class ReferenceAgent:
    """Serves execution requests with a deterministic answer streamed as chunk events."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        settings: AgentSettings,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._telemetry = telemetry or Telemetry(None, None)
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._settings = settings
        self._memory = TaskMemory(settings.dedup_cache)
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._handlers: set[asyncio.Task[None]] = set()
        self._run_sub: Subscription | None = None
        self._cancel_sub: Subscription | None = None
        self.stats = AgentStats()

    @property
    def executions(self) -> int:
        """How many times a task's work was actually started (de-duplicated requests excluded)."""
        return self._memory.executions

    async def start(self) -> None:
        """Subscribe; on return the server knows the agent is there."""
        self._run_sub = await self._nc.subscribe(
            self._subjects.execution_run, queue=QUEUE_GROUP, cb=self._on_run
        )
        self._cancel_sub = await self._nc.subscribe(
            self._subjects.execution_cancel, cb=self._on_cancel
        )
        await self._nc.flush()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, give in-flight ones up to `grace` seconds, then cancel the rest."""
        run_sub, self._run_sub = self._run_sub, None
        if run_sub is not None:
            with contextlib.suppress(NatsError, TimeoutError):
                await asyncio.wait_for(run_sub.drain(), grace)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=grace)
        self._memory.cancel_all()
        leftovers = set(self._handlers) | set(self._memory.running)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=grace)
        cancel_sub, self._cancel_sub = self._cancel_sub, None
        if cancel_sub is not None:
            with contextlib.suppress(NatsError):
                await cancel_sub.unsubscribe()

    async def _on_run(self, msg: Msg) -> None:
        # nats-py delivers a subscription's messages one at a time: hand each to its own task, and
        # hold the callback while all slots are busy so the backlog waits in the subscription.
        await self._slots.acquire()
        handler = asyncio.create_task(self._handle(msg))
        self._handlers.add(handler)
        handler.add_done_callback(self._handler_done)

    def _handler_done(self, handler: asyncio.Task[None]) -> None:
        self._handlers.discard(handler)
        self._slots.release()

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = decode(msg.data, ExecutionCancel, format_of(msg.headers))
        except ValidationFailed as exc:
            logger.warning("agent ignores a malformed cancel: {}", exc.message)
            return
        if self._memory.cancel(cancel.task_id):
            logger.info("agent cancelled task {}", cancel.task_id)

    async def _handle(self, msg: Msg) -> None:
        # Continue the orchestrator's trace: this span is a child of its execution request.
        span = self._telemetry.tracer.start_as_current_span(
            "execution.chat.run", context=self._telemetry.extract(msg.headers), kind=SpanKind.SERVER
        )
        try:
            with span:
                await self._serve(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - outermost boundary of one request
            logger.exception("agent failed on a request: {}", exc)
            with contextlib.suppress(NatsError):
                await self._reply_error(msg, InternalError("execution service failed"))

    async def _serve(self, msg: Msg) -> None:
        self.stats.requests += 1
        fmt = format_of(msg.headers)
        try:
            request = decode(msg.data, ExecutionRequest, fmt)
            self._check_events_subject(request)
        except ValidationFailed as exc:
            await self._reply_error(msg, exc, fmt)
            return
        if self._settings.fail_always or request.attempt <= self._settings.fail_first:
            failure = UpstreamUnavailable(f"injected failure of attempt {request.attempt}")
            await self._reply_error(msg, failure, fmt)
            return
        result = self._memory.finished(request.task_id)
        if result is None:
            work = self._memory.work(request.task_id, lambda: self._execute(request))
            # wait() rather than await: this request being cancelled must not cancel shared work.
            await asyncio.wait({work})
            if work.cancelled():
                self.stats.cancelled += 1
                return
            try:
                result = work.result()
            except OrchestratorError as exc:
                await self._reply_error(msg, exc, fmt)
                return
        await self._reply(msg, encode(result, fmt), self._format_headers(fmt))

    def _check_events_subject(self, request: ExecutionRequest) -> None:
        try:
            expected = self._subjects.session_events(request.session_id)
        except SubjectError as exc:
            raise ValidationFailed(f"session_id: {exc}") from None
        if request.events_subject != expected:
            raise ValidationFailed(f"events_subject must be {expected!r}")

    async def _execute(self, request: ExecutionRequest) -> ExecutionResult:
        if self._settings.delay:
            await asyncio.sleep(self._settings.delay)
        answer = answer_for(request)
        parts = split_answer(answer, self._settings.chunks)
        for index, part in enumerate(parts):
            if index and self._settings.chunk_delay:
                await asyncio.sleep(self._settings.chunk_delay)
            chunk = ChatChunk(
                session_id=request.session_id,
                at=datetime.now(UTC),
                task_id=request.task_id,
                index=index,
                content=part,
            )
            try:
                await self._js.publish(
                    request.events_subject,
                    encode(chunk),
                    headers=self._telemetry.inject(
                        {Header.MSG_ID.value: f"{request.task_id}.chunk.{index}"}
                    ),
                )
            except NatsError as exc:
                raise Unavailable(f"could not store chunk {index}: {exc}") from None
        return ExecutionResult(task_id=request.task_id, content=answer, chunks=len(parts))

    async def _reply_error(
        self, msg: Msg, error: OrchestratorError, fmt: WireFormat = WireFormat.JSON
    ) -> None:
        self.stats.errors += 1
        headers = self._format_headers(fmt) or {}
        # A header value may not hold line breaks; the envelope keeps the message intact.
        headers[ERROR_HEADER] = " ".join(error.message.split())[:256]
        headers[ERROR_CODE_HEADER] = str(transport_for(error.code).http_status)
        await self._reply(msg, encode(error.envelope(), fmt), headers)

    async def _reply(self, msg: Msg, data: bytes, headers: dict[str, str] | None) -> None:
        if not msg.reply:
            logger.debug("agent got a request without a reply subject; answer dropped")
            return
        self.stats.replies += 1
        await self._nc.publish(msg.reply, data, headers=headers)

    @staticmethod
    def _format_headers(fmt: WireFormat) -> dict[str, str] | None:
        return {CONTENT_TYPE_HEADER: fmt.value} if fmt is WireFormat.MSGPACK else None
