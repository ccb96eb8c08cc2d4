"""Serves every DomainAction as an endpoint of the `orchestrator` NATS micro service.

nats-py runs an endpoint's handler inline, one request at a time per subscription; here the
handler only admits the request (bounded by `action_concurrency`) and the work runs in its own
task, so one slow action never stalls the others. Micro stats are kept accurate by hand.

Admission sheds load instead of queueing it: when the last slot is taken, the instance leaves the
queue group of every endpoint (the server stops routing requests to it, and other instances get
them) and rejoins once its in-flight actions fall to `action_resume_ratio` of the limit. Requests
that were already on their way wait for a slot in a buffer bounded by `action_pending_msgs` /
`action_pending_bytes`; that bound, not the client library's default of 512k messages, is what an
instance can hold in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.errors import ServiceUnavailableError
from nats.micro import ServiceConfig
from nats.micro.request import Request
from nats.micro.service import Endpoint, EndpointConfig, Service
from opentelemetry.trace import Span

from orchestrator.codecs.actions import ACTIONS, ActionSpec
from orchestrator.codecs.errors import (
    InternalError,
    OrchestratorError,
    PayloadTooLarge,
    Unavailable,
    ValidationFailed,
)
from orchestrator.codecs.transport import error_reply, format_headers, format_of
from orchestrator.codecs.wire import WireFormat, action_type_of, decode, encode
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.runtime.nats_internals import (
    endpoint_subscription,
    endpoints_by_name,
    flush_in_order,
    record_endpoint_error,
    record_processing,
    reply_subject,
    resubscribe_endpoint,
)
from orchestrator.service.runtime.telemetry import record_error
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.ids import new_id
from orchestrator.subjects import Subjects

Handler = Callable[[ExecutionContext, Any], Awaitable[Any]]
VERSION = "0.1.0"
DESCRIPTION = "Nooble4 agent orchestrator: chat sessions, tasks and DomainActions"


class ActionServer:
    """The micro service: decode, check the context, run the handler, reply or map the error."""

    def __init__(self, wiring: Wiring, handlers: dict[str, Handler]) -> None:
        missing = set(ACTIONS) - set(handlers)
        if missing:
            raise ValueError(f"no handler for actions {sorted(missing)}")
        settings = wiring.settings
        self._nc = wiring.nc
        self._subjects = wiring.subjects
        self._settings = settings
        self._handlers = handlers
        self._telemetry = wiring.telemetry
        self._metrics = wiring.metrics
        self._admission = asyncio.Semaphore(settings.action_concurrency)
        self._inflight: set[asyncio.Task] = set()
        self._endpoints: dict[str, Endpoint] = {}
        self._resume_at = min(
            int(settings.action_concurrency * settings.action_resume_ratio),
            settings.action_concurrency - 1,
        )
        self._joined = True  # the endpoints' subscriptions are in their queue groups
        self._stopping = False
        self._rejoin_pending = False
        self._membership_lock = asyncio.Lock()  # one leave or rejoin at a time
        self._membership: set[asyncio.Task] = set()
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
        self._endpoints = endpoints_by_name(self.service)
        # Micro subscribes with the client's default pending limits (512k messages, 128 MiB);
        # swap in subscriptions bounded by the settings before anything is announced.
        for endpoint in self._endpoints.values():
            old = endpoint_subscription(endpoint)
            await self._subscribe(endpoint)
            if old is not None:
                await old.drain()
        await self.service.start()
        await flush_in_order(self._nc)

    async def stop(self, grace: float) -> None:
        """Stop taking requests, then let in-flight ones finish for `grace` seconds."""
        self._stopping = True
        if self.service is not None:
            # Micro's stop unsubscribes the endpoints' subscriptions: they must be live ones.
            await self._rejoin(force=True)
            await self.service.stop()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()

    @property
    def saturated(self) -> bool:
        """True while this instance is out of the queue groups because every slot is taken."""
        return not self._joined

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def _admit(self, spec: ActionSpec) -> Callable[[Request], Awaitable[None]]:
        async def handler(request: Request) -> None:
            if not reply_subject(request):
                # A command nobody can be told the outcome of is refused, not run blindly.
                logger.warning("{} published without a reply subject; ignored", request.subject)
                return
            await self._admission.acquire()
            if self._admission.locked() and self._joined and not self._stopping:
                # Leave before the work starts: once this returns the server routes no more
                # requests here, so nothing else queues behind the full instance.
                await self._leave()
            task = asyncio.create_task(self._serve(spec, request))
            self._inflight.add(task)
            task.add_done_callback(self._done)

        return handler

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self._admission.release()
        if (
            not self._joined
            and not self._rejoin_pending
            and not self._stopping
            and len(self._inflight) <= self._resume_at
        ):
            self._rejoin_pending = True
            self._membership_change(self._rejoin())

    async def _subscribe(self, endpoint: Endpoint) -> None:
        limits = self._settings.action_pending_msgs, self._settings.action_pending_bytes
        await resubscribe_endpoint(self._nc, endpoint, *limits)

    async def _leave(self) -> None:
        """Leave every endpoint's queue group; requests already buffered here still run."""
        async with self._membership_lock:
            if not self._joined:
                return
            self._joined = False
            for endpoint in self._endpoints.values():
                sub = endpoint_subscription(endpoint)
                if sub is not None:
                    self._membership_change(_drain(sub))
            await asyncio.sleep(0)  # let each drain send its UNSUB before the flush below
            try:
                await flush_in_order(self._nc)
            except (NatsError, TimeoutError) as exc:
                logger.warning("could not confirm leaving the queue groups: {!r}", exc)
        logger.warning(
            "all {} action slots taken: left the queue groups until {} are free",
            self._settings.action_concurrency,
            self._settings.action_concurrency - self._resume_at,
        )

    async def _rejoin(self, force: bool = False) -> None:
        """Subscribe every endpoint again, unless (`force` aside) the instance is full again."""
        async with self._membership_lock:
            self._rejoin_pending = False
            if self._joined or (not force and (self._stopping or self._admission.locked())):
                return
            for endpoint in self._endpoints.values():
                await self._subscribe(endpoint)
            self._joined = True
        logger.info("action slots free again: rejoined the queue groups")

    def _membership_change(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._membership.add(task)
        task.add_done_callback(self._membership_done)

    def _membership_done(self, task: asyncio.Task) -> None:
        self._membership.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A failed rejoin would leave the instance out of the queue groups: say so loudly.
            logger.opt(exception=task.exception()).error("queue group membership change failed")

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
            await request.respond(encode(reply, fmt), headers=format_headers(fmt))
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
            record_processing(endpoint, int(elapsed * 1e9))
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
            record_endpoint_error(endpoint, f"{exc.code.value}: {exc.message}")
        data, headers = error_reply(exc, fmt)
        try:
            await request.respond(data, headers=headers)
        except NatsError as send_error:
            logger.warning("could not send the error reply: {}", send_error)
        return exc.code.value


async def _drain(sub: Subscription) -> None:
    try:
        await sub.drain()
    except (NatsError, TimeoutError) as exc:
        logger.warning("draining an action subscription failed: {!r}", exc)
