"""`ExecutionService`: the NATS side of an execution service built on the SDK (`sdk.py`).

The micro service `execution-<kind>` with one endpoint `run` on `<p>.execution.chat.run` (queue
group `execution`), the cancel subscription, (task id, attempt) de-duplication, the handler
driven through a `PartStream`, typed error replies with the micro headers, and a SERVER span per
request. docs/execution.md is the contract it implements.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass

import msgspec
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.micro import ServiceConfig
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service
from opentelemetry.trace import Span, SpanKind

from orchestrator.codecs.errors import (
    InternalError,
    OrchestratorError,
    UpstreamUnavailable,
    ValidationFailed,
)
from orchestrator.codecs.execution_messages import (
    ExecutionCancel,
    ExecutionRequest,
    ExecutionResult,
    InputRequest,
    ResultStatus,
)
from orchestrator.codecs.transport import error_reply, format_headers, format_of
from orchestrator.codecs.wire import WireFormat, decode, encode
from orchestrator.service.agent.part_stream import PartStream
from orchestrator.service.agent.parts import Ask, Handler, Text, ToolCall, ToolResult
from orchestrator.service.agent.task_memory import TaskMemory
from orchestrator.service.runtime.nats_internals import flush_in_order
from orchestrator.service.runtime.settings import AgentSettings
from orchestrator.service.runtime.telemetry import Telemetry, record_error
from orchestrator.subjects import Subjects
from orchestrator.subjects.permissions import EXECUTION_QUEUE

VERSION = "0.2.0"
SERVICE_PREFIX = "execution-"
RUN_ENDPOINT = "run"

Attempt = tuple[str, int]


@dataclass
class ServiceStats:
    """What the service saw and did; also the `data` of its micro STATS reply."""

    requests: int = 0
    replies: int = 0
    errors: int = 0
    cancelled: int = 0
    executions: int = 0


class ExecutionService:
    """One execution service on one NATS connection: `start()`, then `stop()`."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        kind: str,
        handler: Handler,
        settings: AgentSettings,
        telemetry: Telemetry | None = None,
        version: str = VERSION,
    ) -> None:
        self.name = f"{SERVICE_PREFIX}{kind}"
        self._nc = nc
        self._subjects = subjects
        self._handler = handler
        self._settings = settings
        self._telemetry = telemetry or Telemetry.off()
        self._version = version
        self._memory: TaskMemory[Attempt] = TaskMemory(settings.dedup_cache)
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._requests: set[asyncio.Task[None]] = set()
        self._micro: Service | None = None
        self._cancel_sub: Subscription | None = None
        self.stats = ServiceStats()

    async def start(self) -> None:
        """Subscribe and register; on return the service is discoverable and takes requests."""
        self._cancel_sub = await self._nc.subscribe(
            self._subjects.execution_cancel, cb=self._on_cancel
        )
        self._micro = Service(
            self._nc,
            ServiceConfig(
                name=self.name,
                version=self._version,
                description="Nooble4 execution service: runs chat tasks, streams their parts",
                metadata={"prefix": self._subjects.prefix},
                stats_handler=lambda _endpoint: self._stats_data(),
            ),
        )
        await self._micro.add_endpoint(
            EndpointConfig(
                name=RUN_ENDPOINT,
                subject=self._subjects.execution_run,
                queue_group=EXECUTION_QUEUE,
                handler=self._admit,
                metadata={"cancel_subject": self._subjects.execution_cancel},
            )
        )
        await self._micro.start()
        await flush_in_order(self._nc)
        logger.info(
            "execution service {} ready on {} (queue group {})",
            self.name,
            self._subjects.execution_run,
            EXECUTION_QUEUE,
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, give in-flight ones up to `grace` seconds, then cancel the rest."""
        micro, self._micro = self._micro, None
        if micro is not None:
            with contextlib.suppress(NatsError, TimeoutError):
                await asyncio.wait_for(micro.stop(), grace)
        if self._requests:
            await asyncio.wait(set(self._requests), timeout=grace)
        self._memory.cancel_all()
        leftovers = set(self._requests) | set(self._memory.running)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=grace)
        cancel_sub, self._cancel_sub = self._cancel_sub, None
        if cancel_sub is not None:
            with contextlib.suppress(NatsError):
                await cancel_sub.unsubscribe()

    def _stats_data(self) -> dict[str, int]:
        self.stats.executions = self._memory.executions
        return {**asdict(self.stats), "in_flight": len(self._requests)}

    async def _admit(self, request: Request) -> None:
        # nats-py hands a subscription's messages over one at a time: each request gets its own
        # task, and the callback waits while all slots are busy, so the backlog waits in the
        # subscription instead of becoming tasks.
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(request))
        self._requests.add(task)
        task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._requests.discard(task)
        self._slots.release()

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = decode(msg.data, ExecutionCancel, format_of(msg.headers))
        except ValidationFailed as exc:
            logger.warning("{} ignores a malformed cancel: {}", self.name, exc.message)
            return
        task_id, attempt = cancel.task_id, cancel.attempt
        stopped = self._memory.cancel_where(
            lambda key: key[0] == task_id and attempt in (0, key[1])
        )
        if stopped:
            logger.info("{} cancelled task {} (attempt {})", self.name, task_id, attempt or "all")

    async def _handle(self, request: Request) -> None:
        self.stats.requests += 1
        fmt = format_of(request.headers)
        with self._telemetry.tracer.start_as_current_span(
            "execution.chat.run",
            context=self._telemetry.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes={"execution.service": self.name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self._serve(request, fmt, span)
            except OrchestratorError as exc:
                logger.warning("{} replies {}: {}", self.name, exc.code.value, exc.message)
                record_error(span, exc)
                await self._reply_error(request, exc, fmt)
            except Exception as exc:  # noqa: BLE001 - outermost boundary of one request
                logger.exception("{} failed on a request: {}", self.name, exc)
                record_error(span, exc)
                await self._reply_error(request, InternalError("execution service failed"), fmt)

    async def _serve(self, request: Request, fmt: WireFormat, span: Span) -> None:
        execution = decode(request.data, ExecutionRequest, fmt)
        if not self._subjects.is_execution_stream(execution.stream_subject):
            raise ValidationFailed("stream_subject: not an execution stream subject of this bus")
        span.set_attribute("task.id", execution.task_id)
        span.set_attribute("execution.attempt", execution.attempt)
        if self._settings.fail_always or execution.attempt <= self._settings.fail_first:
            raise UpstreamUnavailable(f"injected failure of attempt {execution.attempt}")
        task_id, attempt = execution.task_id, execution.attempt
        # The orchestrator sends attempt n only after giving up on the earlier ones.
        if self._memory.cancel_where(lambda key: key[0] == task_id and key[1] < attempt):
            logger.info("{} stopped earlier attempts of task {}", self.name, task_id)
        result = self._memory.finished((task_id, attempt))
        if result is None:
            work = self._memory.work((task_id, attempt), lambda: self._execute(execution))
            # wait() rather than await: this request being cancelled must not cancel shared work.
            await asyncio.wait({work})
            if work.cancelled():
                self.stats.cancelled += 1
                return
            result = work.result()
        await self._reply(request, encode(result, fmt), format_headers(fmt))

    async def _execute(self, request: ExecutionRequest) -> ExecutionResult:
        asked: Ask | None = None
        settings = self._settings
        async with PartStream(
            self._nc, request, settings.stream_flush_ms, settings.stream_flush_bytes
        ) as stream:
            if settings.delay:
                await asyncio.sleep(settings.delay)
            parts = self._handler(request)
            try:
                async for item in parts:
                    match item:
                        case str():
                            await stream.text(item)
                        case Text():
                            await stream.text(item.content)
                        case ToolCall():
                            await stream.tool_call(item.call_id, item.name, item.arguments)
                        case ToolResult():
                            await stream.tool_result(item.call_id, item.content)
                        case Ask():
                            asked = item
                            break
                        case _:
                            raise InternalError(f"the handler yielded {type(item).__name__}")
            finally:
                await parts.aclose()
            await stream.flush()
        if asked is None:
            return ExecutionResult(
                task_id=request.task_id, attempt=request.attempt, parts=stream.sent
            )
        return ExecutionResult(
            task_id=request.task_id,
            attempt=request.attempt,
            status=ResultStatus.INPUT_REQUIRED,
            parts=stream.sent,
            input=_input_request(asked),
        )

    async def _reply_error(self, request: Request, error: OrchestratorError, fmt: WireFormat):
        self.stats.errors += 1
        data, headers = error_reply(error, fmt)
        await self._reply(request, data, headers)

    async def _reply(self, request: Request, data: bytes, headers: dict[str, str] | None) -> None:
        try:
            await request.respond(data, headers=headers)
        except ValueError:
            logger.debug("{} got a request without a reply subject; answer dropped", self.name)
            return
        except NatsError as exc:
            logger.warning("{} could not reply: {!r}", self.name, exc)
            return
        self.stats.replies += 1


def _input_request(asked: Ask) -> InputRequest:
    try:
        return msgspec.convert({"prompt": asked.prompt, "schema": asked.schema}, InputRequest)
    except msgspec.ValidationError as exc:
        raise InternalError(f"the handler asked an invalid question: {exc}") from None
