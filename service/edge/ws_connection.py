"""One WebSocket client: a reader loop, a bounded outbox, token expiry timers, one close.

States: connecting (verify, session.get, subscribe, replay) -> live (reader; a writer task while
the outbox holds frames) -> closing (exactly one close task with one close code) -> closed
(subscription, timers and tasks gone). An idle socket holds no writer task, no queue and no
timer task: with thousands of idle sockets per edge, each of those costs more than the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, replace

from aiohttp import WSMsgType, web
from loguru import logger

from orchestrator.codecs.actions import CancelTask, EventRecord, RespondTask, SendChat
from orchestrator.codecs.errors import (
    TRANSPORT,
    CloseCode,
    ErrorCode,
    Forbidden,
    OrchestratorError,
    RateLimited,
    ValidationFailed,
)
from orchestrator.codecs.frames import (
    AckData,
    AuthExpiringData,
    AuthRefreshedData,
    AuthRefreshFrame,
    ChatMessageFrame,
    ClientMessage,
    PingFrame,
    ServerFrame,
    TaskCancelFrame,
    TaskRespondFrame,
    error_frame,
    event_frame,
)
from orchestrator.codecs.frames import WebSocketMessageType as T
from orchestrator.codecs.wire import decode, encode
from orchestrator.service.edge.auth import Identity
from orchestrator.service.edge.edge_deps import EdgeDeps
from orchestrator.service.edge.ratelimit import TokenBucket
from orchestrator.service.edge.session_feed import is_closing
from orchestrator.service.store.ids import new_id

_UNAUTHORIZED = TRANSPORT[ErrorCode.UNAUTHORIZED].ws_close_code
_FORBIDDEN = TRANSPORT[ErrorCode.FORBIDDEN].ws_close_code


@dataclass
class SocketStats:
    """Counters of an edge's sockets for tests and debugging (operators read the OTel metrics)."""

    accepted: int = 0
    slow_consumers: int = 0
    rate_limited: int = 0


class Connection:
    """Bridges one client socket to its session's events and to chat.send (a `Follower`)."""

    def __init__(
        self,
        deps: EdgeDeps,
        stats: SocketStats,
        request: web.Request,
        ws: web.WebSocketResponse,
        identity: Identity,
        session_id: str,
    ) -> None:
        s = deps.settings
        self._deps = deps
        self._stats = stats
        self._request = request
        self._ws = ws
        self.identity = identity
        self.session_id = session_id
        self._outbox_limit = s.ws_send_queue
        self._outbox_byte_limit = s.ws_send_queue_bytes
        # Text frames and at most one (code, reason) close, in order; None while empty.
        self._outbox: deque[str | tuple[int, str]] | None = None
        self._outbox_bytes = 0
        # The loop time of the client's last frame that does something (not a `ping`).
        self._last_activity = 0.0
        self._bucket = TokenBucket(s.ws_rate, s.ws_burst)
        self._tasks: set[asyncio.Task] = set()
        self._live = False
        self._writer: asyncio.Task | None = None
        self._expiry: list[asyncio.TimerHandle] = []
        self._close_task: asyncio.Task | None = None

    @property
    def closing(self) -> bool:
        return self._close_task is not None

    @property
    def active_tasks(self) -> list[asyncio.Task]:
        """Tasks this connection started that have not finished: its writer and chat sends."""
        tasks = [*self._tasks, self._writer, self._close_task]
        return [task for task in tasks if task is not None and not task.done()]

    async def send_now(self, frame: ServerFrame) -> None:
        """Send while connecting, before the writer runs (the client's pace sets ours)."""
        await self._ws.send_str(encode(frame).decode())

    def enqueue(self, frame: ServerFrame | tuple[int, str]) -> None:
        """Queue a frame (or a close) for the writer; a full outbox means a slow consumer."""
        if self.closing:
            return
        item = frame if isinstance(frame, tuple) else encode(frame).decode()
        size = len(item) if isinstance(item, str) else 0
        if self._outbox is None:
            self._outbox = deque()
        elif (
            len(self._outbox) >= self._outbox_limit
            or self._outbox_bytes + size > self._outbox_byte_limit
        ):
            # Bounded in frames and in bytes: a socket that never reads pins neither.
            self._stats.slow_consumers += 1
            logger.warning("slow WebSocket consumer on session {}; closing", self.session_id)
            self._outbox.clear()
            self._outbox_bytes = 0
            self.begin_close(CloseCode.SLOW_CONSUMER, "slow consumer")
            return
        self._outbox_bytes += size
        self._outbox.append(item)
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._live and self._outbox and (self._writer is None or self._writer.done()):
            self._writer = asyncio.create_task(self._write())

    async def write(self, record: EventRecord) -> None:
        """A replayed event while joining; the session's last one closes the socket."""
        await self.send_now(event_frame(record))
        if is_closing(record):
            self.begin_close(CloseCode.NORMAL, "session closed")

    def deliver(self, record: EventRecord) -> None:
        """Called by the live feed for each new event, in sequence order."""
        self.enqueue(event_frame(record))
        if is_closing(record):
            self.enqueue((CloseCode.NORMAL, "session closed"))

    def lost(self) -> None:
        """Live events were missed after a NATS outage: the client resumes from its last seq."""
        self.begin_close(CloseCode.SERVICE_RESTART, "missed live events; resume with after_seq")

    def _rate_limited(self, scope: str) -> None:
        self._stats.rate_limited += 1
        self._deps.metrics.rate_limited(scope)

    def begin_close(self, code: int, reason: str) -> asyncio.Task:
        """Start the one close of this socket (later calls return the same task)."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close(code, reason))
        return self._close_task

    async def _close(self, code: int, reason: str) -> None:
        if self._writer is not None:
            self._writer.cancel()
        try:
            async with asyncio.timeout(self._deps.settings.ws_close_timeout):
                await self._ws.close(code=code, message=reason.encode()[:120])
        except (TimeoutError, ConnectionError):
            # A client that reads nothing cannot take even the close frame: drop it.
            transport = self._request.transport
            if transport is not None:
                transport.abort()

    def start_live(self) -> None:
        """Send what was queued meanwhile, from now on as it comes; arm the token expiry."""
        self._live = True
        self._wake_writer()
        self._restart_expiry()

    async def _write(self) -> None:
        # Ends when the outbox is empty; the next enqueue starts a new writer. Only one runs:
        # a writer is done (synchronously) as soon as it finds the outbox empty.
        while self._outbox:
            item = self._outbox.popleft()
            if isinstance(item, tuple):
                self.begin_close(*item)
                return
            self._outbox_bytes -= len(item)
            try:
                await self._ws.send_str(item)
            except ConnectionError:
                return
        self._outbox = None

    def _restart_expiry(self) -> None:
        """Warn `token_refresh_warning` seconds before the token expires; close at expiry."""
        for handle in self._expiry:
            handle.cancel()
        loop = asyncio.get_running_loop()
        # Wall-clock deadlines mapped onto the loop's monotonic clock.
        expires_in = self.identity.expires_at - time.time()
        warn_in = expires_in - self._deps.settings.token_refresh_warning
        now = loop.time()
        self._expiry = [
            loop.call_at(now + max(0.0, warn_in), self._warn_expiry),
            loop.call_at(now + max(0.0, expires_in), self._expired),
        ]

    def _warn_expiry(self) -> None:
        left = max(0.0, self.identity.expires_at - time.time())
        data = AuthExpiringData(expires_at=self.identity.expires_at_datetime, seconds_left=left)
        self.enqueue(ServerFrame(type=T.AUTH_EXPIRING, data=data))

    def _expired(self) -> None:
        self.begin_close(_UNAUTHORIZED, "token expired")

    async def read(self) -> None:
        """The reader loop: until the client closes, the socket fails, or it idles too long.

        Idle means no frame that does something (`chat.message`, `auth.refresh`) for
        `ws_idle_timeout` seconds: neither the edge's protocol heartbeats nor `ping` frames count,
        so a socket kept open by pings alone is still let go (the page reconnects with
        `after_seq` when its user comes back).
        """
        idle = self._deps.settings.ws_idle_timeout
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        while not self.closing:
            try:
                # An absolute deadline: receive(timeout=) restarts its clock at every pong.
                async with asyncio.timeout_at(self._last_activity + idle):
                    msg = await self._ws.receive()
            except TimeoutError:
                self.begin_close(CloseCode.IDLE_TIMEOUT, "idle timeout")
                break
            if msg.type is WSMsgType.TEXT:
                self._on_text(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self.enqueue(error_frame(ValidationFailed("only JSON text frames are accepted")))
            else:
                break
            # receive() does not yield while frames are buffered: let the writer send this
            # frame's reply first, or a burst of frames fills the send queue by itself.
            await asyncio.sleep(0)

    def _on_text(self, text: str) -> None:
        if not self._bucket.take():
            self._rate_limited("ws_connection")
            wait = {"retry_after": round(self._bucket.retry_after, 3)}
            self.enqueue(error_frame(RateLimited("too many frames on this connection", wait)))
            return
        try:
            frame = decode(text, ClientMessage)
        except ValidationFailed as exc:
            self.enqueue(error_frame(exc))
            return
        if not isinstance(frame, PingFrame):
            self._last_activity = asyncio.get_running_loop().time()
        match frame:
            case PingFrame():
                self.enqueue(ServerFrame(type=T.PONG, id=frame.id))
            case ChatMessageFrame():
                ctx = self.identity.ctx
                wait = self._deps.limiter.take(ctx.tenant_id, ctx.user_id)
                if wait is not None:
                    self._rate_limited("user")
                    error = RateLimited("too many messages from this user", {"retry_after": wait})
                    self.enqueue(error_frame(error, frame.id))
                    return
                self.spawn(self._chat(frame))
            case TaskCancelFrame():
                payload = CancelTask(task_id=frame.data.task_id)
                self.spawn(self._task_action("task.cancel", payload, frame.id))
            case TaskRespondFrame():
                respond = RespondTask(task_id=frame.data.task_id, content=frame.data.content)
                self.spawn(self._task_action("task.respond", respond, frame.id))
            case AuthRefreshFrame():
                self._refresh(frame)

    def spawn(self, coro) -> None:
        """Run `coro` for this connection; cancelled when it finishes."""
        self.adopt(asyncio.create_task(coro))

    def adopt(self, task: asyncio.Task) -> None:
        """Cancel `task` (e.g. a supervised one) when this connection finishes."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _chat(self, frame: ChatMessageFrame) -> None:
        ctx = replace(self.identity.ctx, correlation_id=new_id())
        payload = SendChat(session_id=self.session_id, content=frame.data.content)
        # The frame id, scoped to this user and session, makes a retried frame idempotent.
        try:
            accepted = await self._deps.bus.call("chat.send", ctx, payload, client_id=frame.id)
        except OrchestratorError as exc:
            self.enqueue(error_frame(exc, frame.id))
            return
        # Only now is the message durably stored, so only now is it acknowledged.
        ack = AckData(task_id=accepted.task_id, seq=accepted.seq)
        self.enqueue(ServerFrame(type=T.ACK, id=frame.id, data=ack))

    async def _task_action(self, action_type: str, payload, frame_id: str | None) -> None:
        """`task.cancel` / `task.respond`: replied with a `task` frame holding the task."""
        ctx = replace(self.identity.ctx, correlation_id=new_id())
        try:
            view = await self._deps.bus.call(action_type, ctx, payload)
        except OrchestratorError as exc:
            self.enqueue(error_frame(exc, frame_id))
            return
        self.enqueue(ServerFrame(type=T.TASK, id=frame_id, data=view))

    def _refresh(self, frame: AuthRefreshFrame) -> None:
        try:
            identity = self._deps.verifier.verify(frame.data.token)
        except OrchestratorError as exc:
            self.enqueue(error_frame(exc, frame.id))
            return
        if not identity.same_caller(self.identity):
            self.enqueue(error_frame(Forbidden("token is for another user"), frame.id))
            self.enqueue((_FORBIDDEN, "token is for another user"))
            return
        self.identity = identity
        self._restart_expiry()
        data = AuthRefreshedData(expires_at=identity.expires_at_datetime)
        self.enqueue(ServerFrame(type=T.AUTH_REFRESHED, id=frame.id, data=data))

    async def finish(self) -> None:
        """Wait for the close, then stop every task of this connection."""
        if self._close_task is None and not self._ws.closed:
            self.begin_close(CloseCode.NORMAL, "")
        if self._close_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._close_task
        for handle in self._expiry:
            handle.cancel()
        for task in (self._writer, *self._tasks):
            if task is not None:
                task.cancel()
