"""`GET /api/sessions/{session_id}/stream`: a session's events as Server-Sent Events.

For clients and proxies where a WebSocket does not fit. The join is the WebSocket's (the live
feed of `live.py`: subscribe first, replay after the resume point, go live at the seam), so is
the auth (a bearer token, or `?token=` since `EventSource` cannot set headers), the per-user rate
limit and the `recovered` flag of `session.ready`. Each event is `id: <seq>`, `event: <type>`,
`data: <the WebSocket frame of the same name>`; a reconnecting `EventSource` sends the last id
as `Last-Event-ID` and resumes after it. A stream that cannot go on (slow reader, token expired,
catch-up after a NATS outage failed, edge shutting down) ends, after an `error` event where there
is something to say; the client reconnects with `Last-Event-ID` and loses nothing. A closed
session with nothing left to replay answers 204, which stops an `EventSource` for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from functools import partial

from aiohttp import web
from loguru import logger
from nats.aio.client import Client

from orchestrator.codecs.actions import EventRecord, GetSession, GetSessionEvents
from orchestrator.codecs.errors import (
    ActionTimeout,
    Conflict,
    OrchestratorError,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from orchestrator.codecs.frames import ServerFrame, SessionReadyData
from orchestrator.codecs.frames import WebSocketMessageType as T
from orchestrator.codecs.records import SessionStatus
from orchestrator.codecs.wire import encode
from orchestrator.service.edge.auth import Identity, TokenVerifier
from orchestrator.service.edge.bus import BusClient
from orchestrator.service.edge.live import LiveFeed
from orchestrator.service.edge.middleware import CORS_HEADERS
from orchestrator.service.edge.ratelimit import UserLimiter
from orchestrator.service.edge.routes import convert
from orchestrator.service.edge.ws_connection import error_frame, event_frame
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.subjects import Subjects

LAST_EVENT_ID = "Last-Event-ID"
HEARTBEAT = b": heartbeat\n\n"


def sse_frame(frame: ServerFrame) -> bytes:
    """One SSE event; JSON has no raw newline, so `data` is one line."""
    head = f"id: {frame.seq}\n" if frame.seq is not None else ""
    return f"{head}event: {frame.type}\ndata: ".encode() + encode(frame) + b"\n\n"


class SseClient:
    """One open stream: a bounded outbox written in order, heartbeats, one end."""

    def __init__(
        self, response: web.StreamResponse, identity: Identity, settings: OrchestratorSettings
    ) -> None:
        self._response = response
        self.identity = identity
        self._heartbeat = settings.sse_heartbeat
        self._limit = settings.ws_send_queue
        self._byte_limit = settings.ws_send_queue_bytes
        self._outbox: deque[bytes] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._ended = False

    def deliver(self, record: EventRecord) -> None:
        """Called by the live feed for each new event, in sequence order."""
        self.push(sse_frame(event_frame(record)))
        if record.event.__struct_config__.tag == T.SESSION_CLOSED:
            self.end()

    def push(self, chunk: bytes) -> None:
        """Queue an event; a reader too slow for the outbox is cut off (it resumes later)."""
        if self._ended:
            return
        if len(self._outbox) >= self._limit or self._bytes + len(chunk) > self._byte_limit:
            logger.warning("slow SSE reader; ending its stream")
            self._outbox.clear()
            self._ended = True
            self._wake.set()
            return
        self._outbox.append(chunk)
        self._bytes += len(chunk)
        self._wake.set()

    def end(self, error: OrchestratorError | None = None) -> None:
        """End after what is queued (and an `error` event, if given)."""
        if error is not None:
            self.push(sse_frame(error_frame(error)))
        self._ended = True
        self._wake.set()

    async def run(self) -> None:
        """Write until the end, a heartbeat when quiet; end at the token's expiry."""
        loop = asyncio.get_running_loop()
        expires = loop.time() + max(0.0, self.identity.expires_at - time.time())
        while self._outbox or not self._ended:
            while self._outbox:
                chunk = self._outbox.popleft()
                self._bytes -= len(chunk)
                await self._response.write(chunk)
            if self._ended:
                break
            if loop.time() >= expires:
                self.end(Unauthorized("token expired"))
                continue
            self._wake.clear()
            wait = min(self._heartbeat, max(expires - loop.time(), 0.0))
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                await self._response.write(HEARTBEAT)


class EventStreamRoute:
    """Serves the SSE route; on NATS reconnect catches streams up, on shutdown ends them."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        bus: BusClient,
        verifier: TokenVerifier,
        limiter: UserLimiter,
        settings: OrchestratorSettings,
        supervisor: Supervisor,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._bus = bus
        self._verifier = verifier
        self._limiter = limiter
        self._settings = settings
        self._supervisor = supervisor
        self._streams: dict[SseClient, LiveFeed] = {}
        self._tasks: set[asyncio.Task] = set()
        self._per_user: Counter[tuple[str, str]] = Counter()
        self._accepting = True

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/sessions/{session_id}/stream", self.handle)]

    def identify(self, request: web.Request) -> Identity:
        """The caller from `Authorization: Bearer` or `?token=`, after the per-user rate limit."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else None
        identity = self._verifier.verify(bearer or request.query.get("token"))
        wait = self._limiter.take(identity.ctx.tenant_id, identity.ctx.user_id)
        if wait is not None:
            raise RateLimited("too many requests", {"retry_after": round(wait, 3)})
        return identity

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._accepting:
            raise Unavailable("edge is shutting down")
        identity = self.identify(request)
        ctx = identity.ctx
        query = {"session_id": request.match_info["session_id"]}
        # A reconnecting EventSource names the last event it got; that wins over the URL's.
        resume = request.headers.get(LAST_EVENT_ID) or request.query.get("after_seq")
        if resume:
            query["after_seq"] = resume
        wanted = convert(GetSessionEvents, query)
        session = await self._bus.call("session.get", ctx, GetSession(session_id=wanted.session_id))
        user = (ctx.tenant_id, ctx.user_id)
        if self._per_user[user] >= self._settings.ws_max_per_user:
            raise RateLimited(f"at most {self._settings.ws_max_per_user} streams per user")
        self._per_user[user] += 1
        s = self._settings
        feed = LiveFeed(
            self._nc, self._subjects, self._bus, ctx, wanted.session_id, s.ws_send_queue
        )
        client: SseClient | None = None
        try:
            await feed.subscribe()
            replay = await feed.replay(wanted.after_seq)
            if session.status is SessionStatus.CLOSED and not replay.records:
                return web.Response(status=204)  # nothing more will come: EventSource stops
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream; charset=utf-8",
                    "Cache-Control": "no-cache, no-store",
                    "X-Accel-Buffering": "no",  # proxies such as nginx would hold events back
                    **request.get(CORS_HEADERS, {}),
                }
            )
            await response.prepare(request)
            client = SseClient(response, identity, s)
            self._streams[client] = feed
            ready = SessionReadyData(
                session_id=wanted.session_id,
                after_seq=wanted.after_seq,
                last_seq=replay.last_seq,
                recovered=replay.recovered,
                replayed=len(replay.records),
            )
            await response.write(sse_frame(ServerFrame(type=T.SESSION_READY, data=ready)))
            try:
                if await self._join(response, client, feed, replay.records, replay.last_seq):
                    await client.run()
            except OrchestratorError as exc:
                with contextlib.suppress(ConnectionError):
                    await response.write(sse_frame(error_frame(exc)))
            except ConnectionError as exc:
                logger.debug("SSE stream of session {} dropped: {}", wanted.session_id, exc)
            return response
        finally:
            if client is not None:
                self._streams.pop(client, None)
            await feed.close()
            self._per_user[user] -= 1
            if not self._per_user[user]:
                del self._per_user[user]

    async def _join(
        self,
        response: web.StreamResponse,
        client: SseClient,
        feed: LiveFeed,
        records: list[EventRecord],
        last: int,
    ) -> bool:
        """Write the replay, then go live without gap or duplicate (the WebSocket's join)."""
        for _ in range(self._settings.ws_catch_up_rounds):
            for record in records:
                await response.write(sse_frame(event_frame(record)))
                if record.event.__struct_config__.tag == T.SESSION_CLOSED:
                    return False
            if feed.go_live(last, client.deliver):
                return True
            replay = await feed.replay(last)
            if not replay.recovered:
                raise Conflict("events aged out while catching up; reconnect with Last-Event-ID")
            records, last = replay.records, replay.last_seq
        return False

    def resync(self) -> None:
        """NATS reconnected: each stream reads what it missed, or ends (the client resumes)."""
        for client, feed in list(self._streams.items()):
            task = self._supervisor.run("sse-catch-up", partial(self._catch_up, client, feed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, client: SseClient, feed: LiveFeed) -> None:
        rounds = self._settings.ws_catch_up_rounds
        for _ in range(rounds):
            try:
                if await feed.resync(client.deliver, rounds):
                    return
                break
            except (Unavailable, ActionTimeout) as exc:
                logger.info("SSE catch-up waits: {}", exc.message)
                await asyncio.sleep(self._settings.nats_reconnect_wait)
            except OrchestratorError as exc:
                logger.info("SSE catch-up failed: {}", exc.message)
                break
        client.end(Unavailable("missed live events; reconnect with Last-Event-ID"))

    async def shutdown(self, _app: web.Application | None = None) -> None:
        """Stop accepting and end every stream, so clients reconnect to another edge."""
        self._accepting = False
        for task in self._tasks:
            task.cancel()
        for client in list(self._streams):
            client.end(Unavailable("service restart; reconnect with Last-Event-ID"))
