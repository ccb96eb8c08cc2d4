"""Serves every DomainAction as an endpoint of the `orchestrator` NATS micro service.

nats-py runs an endpoint's handler inline, one request at a time per subscription; here the
handler only admits the request (bounded by `action_concurrency`) and the work runs in its own
task, so one slow action never stalls the others. Micro stats are kept accurate by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import ServiceUnavailableError
from nats.micro import ServiceConfig
from nats.micro.request import Request
from nats.micro.service import Endpoint, EndpointConfig, Service
from opentelemetry.trace import Span

from orchestrator.codecs.actions import ACTIONS, ActionSpec
from orchestrator.codecs.errors import (
    ErrorEnvelope,
    InternalError,
    OrchestratorError,
    PayloadTooLarge,
    Unavailable,
    ValidationFailed,
    transport_for,
)
from orchestrator.codecs.wire import (
    CONTENT_TYPE_HEADER,
    WireFormat,
    action_type_of,
    decode,
    encode,
    format_of,
)
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.runtime.metrics import Metrics
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry, record_error
from orchestrator.service.store.ids import new_id
from orchestrator.subjects import Subjects

Handler = Callable[[ExecutionContext, Any], Awaitable[Any]]
VERSION = "0.1.0"
DESCRIPTION = "Nooble4 agent orchestrator: chat sessions, tasks and DomainActions"


class ActionServer:
    """The micro service: decode, check the context, run the handler, reply or map the error."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        settings: OrchestratorSettings,
        handlers: dict[str, Handler],
        telemetry: Telemetry,
        metrics: Metrics | None = None,
    ) -> None:
        missing = set(ACTIONS) - set(handlers)
        if missing:
            raise ValueError(f"no handler for actions {sorted(missing)}")
        self._nc = nc
        self._subjects = subjects
        self._settings = settings
        self._handlers = handlers
        self._telemetry = telemetry
        self._metrics = metrics
        self._admission = asyncio.Semaphore(settings.action_concurrency)
        self._inflight: set[asyncio.Task] = set()
        self._endpoints: dict[str, Endpoint] = {}
        self.service: Service | None = None

    async def start(self) -> None:
        config = ServiceConfig(
            name=Subjects.SERVICE_NAME,
            version=VERSION,
            description=DESCRIPTION,
            metadata={"instance": self._settings.instance_id, "prefix": self._subjects.prefix},
            stats_handler=lambda _endpoint: {"in_flight": len(self._inflight)},
        )
        self.service = Service(self._nc, config)
        # Endpoints first, discovery last: an instance that answers PING serves every action.
        for spec in ACTIONS.values():
            await self.service.add_endpoint(
                EndpointConfig(
                    name=spec.endpoint_name,
                    subject=self._subjects.action(spec.action_type),
                    handler=self._admit(spec),
                    metadata={"kind": spec.kind.value, "permission": spec.permission,
                              "summary": spec.summary},
                )
            )  # fmt: skip
        # nats-py keeps endpoints privately; stats need them to count errors of detached work.
        self._endpoints = {ep._name: ep for ep in self.service._endpoints}
        await self.service.start()
        await self._nc.flush()

    async def stop(self, grace: float) -> None:
        """Stop taking requests, then let in-flight ones finish for `grace` seconds."""
        if self.service is not None:
            await self.service.stop()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def _admit(self, spec: ActionSpec) -> Callable[[Request], Awaitable[None]]:
        async def handler(request: Request) -> None:
            if not request._msg.reply:
                # A command nobody can be told the outcome of is refused, not run blindly.
                logger.warning("{} published without a reply subject; ignored", request.subject)
                return
            await self._admission.acquire()
            task = asyncio.create_task(self._serve(spec, request))
            self._inflight.add(task)
            task.add_done_callback(self._done)

        return handler

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self._admission.release()

    async def _serve(self, spec: ActionSpec, request: Request) -> None:
        with self._telemetry.span_for_action(spec.action_type, request.headers) as span:
            await self._serve_in_span(spec, request, span)

    async def _serve_in_span(self, spec: ActionSpec, request: Request, span: Span) -> None:
        started = time.perf_counter()
        fmt = format_of(request.headers)
        ctx: ExecutionContext | None = None
        session_id = None
        try:
            ctx, payload = self._decode(spec, request, fmt)
            session_id = getattr(payload, "session_id", None)
            span.set_attribute("tenant.id", ctx.tenant_id)
            ctx.require(spec.permission)
            reply = await self._handlers[spec.action_type](ctx, payload)
            headers = {CONTENT_TYPE_HEADER: fmt.value} if fmt is WireFormat.MSGPACK else None
            await request.respond(encode(reply, fmt), headers=headers)
            outcome = "ok"
        except OrchestratorError as exc:
            outcome = await self._fail(spec, request, fmt, exc, span)
        except (TimeoutError, NatsError, ServiceUnavailableError) as exc:
            outcome = await self._fail(spec, request, fmt, Unavailable(f"NATS: {exc!r}"), span)
        except Exception:  # noqa: BLE001 - outermost boundary of one action
            logger.exception("action {} failed unexpectedly", spec.action_type)
            outcome = await self._fail(spec, request, fmt, InternalError("internal error"), span)
        elapsed = time.perf_counter() - started
        span_context = span.get_span_context()
        logger.bind(
            trace_id=format(span_context.trace_id, "032x") if span_context.is_valid else None,
            action_type=spec.action_type,
            action_id=ctx.action_id if ctx else None,
            correlation_id=ctx.correlation_id if ctx else None,
            tenant_id=ctx.tenant_id if ctx else None,
            session_id=session_id,
            outcome=outcome,
            duration_ms=round(elapsed * 1000, 3),
        ).info("action {} {}", spec.action_type, outcome)
        endpoint = self._endpoints.get(spec.endpoint_name)
        if endpoint is not None:
            endpoint._processing_time += int(elapsed * 1e9)
            endpoint._average_processing_time = endpoint._processing_time // max(
                endpoint._num_requests, 1
            )
        if self._metrics is not None:
            self._metrics.action_done(spec.action_type, outcome, elapsed)

    def _decode(
        self, spec: ActionSpec, request: Request, fmt: WireFormat
    ) -> tuple[ExecutionContext, Any]:
        if len(request.data) > self._settings.max_message_bytes:
            raise PayloadTooLarge(
                f"message of {len(request.data)} bytes exceeds {self._settings.max_message_bytes}",
                {"limit": self._settings.max_message_bytes},
            )
        envelope = decode(request.data, action_type_of(spec.action_type), fmt)
        if envelope.action_type is not None and envelope.action_type != spec.action_type:
            raise ValidationFailed(
                f"action_type {envelope.action_type!r} does not match the subject's "
                f"{spec.action_type!r}"
            )
        action_id = envelope.action_id or new_id()
        ctx = ExecutionContext(
            tenant_id=envelope.tenant_id,
            user_id=envelope.user_id,
            permissions=frozenset(envelope.permissions)
            if envelope.permissions is not None
            else ExecutionContext.__dataclass_fields__["permissions"].default,
            action_id=action_id,
            correlation_id=envelope.correlation_id or action_id,
            send_id=envelope.action_id or "",
        )
        return ctx, envelope.data

    async def _fail(
        self,
        spec: ActionSpec,
        request: Request,
        fmt: WireFormat,
        exc: OrchestratorError,
        span: Span,
    ) -> str:
        record_error(span, exc)
        endpoint = self._endpoints.get(spec.endpoint_name)
        if endpoint is not None:
            endpoint._num_errors += 1
            endpoint._last_error = f"{exc.code.value}: {exc.message}"
        headers = {CONTENT_TYPE_HEADER: fmt.value} if fmt is WireFormat.MSGPACK else None
        try:
            await request.respond_error(
                str(transport_for(exc.code).http_status),
                exc.message,
                data=encode(ErrorEnvelope(error=exc.body()), fmt),
                headers=headers,
            )
        except NatsError as send_error:
            logger.warning("could not send the error reply: {}", send_error)
        return exc.code.value
