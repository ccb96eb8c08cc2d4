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
from collections import deque

from aiohttp import web
from loguru import logger

from orchestrator.codecs.actions import EventRecord, GetSession, GetSessionEvents
from orchestrator.codecs.errors import OrchestratorError, Unauthorized, Unavailable
from orchestrator.codecs.frames import ServerFrame, error_frame, event_frame
from orchestrator.codecs.frames import WebSocketMessageType as T
from orchestrator.codecs.records import SessionStatus
from orchestrator.codecs.wire import encode
from orchestrator.service.edge.auth import Identity, bearer_token
from orchestrator.service.edge.edge_deps import EdgeDeps
from orchestrator.service.edge.middleware import CORS_HEADERS
from orchestrator.service.edge.routes import convert
from orchestrator.service.edge.session_feed import Joined, SessionFeeds, is_closing, ready_data
from orchestrator.service.runtime.settings import OrchestratorSettings

LAST_EVENT_ID = "Last-Event-ID"
HEARTBEAT = b": heartbeat\n\n"


def sse_frame(frame: ServerFrame) -> bytes:
    """One SSE event; JSON has no raw newline, so `data` is one line."""
    head = f"id: {frame.seq}\n" if frame.seq is not None else ""
    return f"{head}event: {frame.type}\ndata: ".encode() + encode(frame) + b"\n\n"


class SseClient:
    """One open stream (a `Follower`): a bounded outbox written in order, heartbeats, one end."""

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

    async def write(self, record: EventRecord) -> None:
        """A replayed event while joining, written at once (the client's pace sets ours)."""
        await self._response.write(sse_frame(event_frame(record)))

    def deliver(self, record: EventRecord) -> None:
        """Called by the live feed for each new event, in sequence order."""
        self.push(sse_frame(event_frame(record)))
        if is_closing(record):
            self.end()

    def lost(self) -> None:
        """Live events were missed after a NATS outage: end; the client resumes."""
        self.end(Unavailable("missed live events; reconnect with Last-Event-ID"))

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

    def __init__(self, deps: EdgeDeps) -> None:
        self._deps = deps
        self._settings = deps.settings
        self._feeds = SessionFeeds(deps, "streams", "reconnect with Last-Event-ID")
        self._clients: set[SseClient] = set()
        self._accepting = True

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/sessions/{session_id}/stream", self.handle)]

    def identify(self, request: web.Request) -> Identity:
        """The caller from `Authorization: Bearer` or `?token=`, after the per-user rate limit."""
        identity = self._deps.verifier.verify(bearer_token(request) or request.query.get("token"))
        self._deps.take_request(identity.ctx)
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
        get = GetSession(session_id=wanted.session_id)
        session = await self._deps.bus.call("session.get", ctx, get)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache, no-store",
                "X-Accel-Buffering": "no",  # proxies such as nginx would hold events back
                **request.get(CORS_HEADERS, {}),
            }
        )
        client = SseClient(response, identity, self._settings)
        feed = self._feeds.open(ctx, wanted.session_id, client)
        try:
            await feed.subscribe()
            replay = await feed.replay(wanted.after_seq)
            if session.status is SessionStatus.CLOSED and not replay.records:
                return web.Response(status=204)  # nothing more will come: EventSource stops
            await response.prepare(request)
            self._clients.add(client)
            ready = ready_data(wanted.session_id, wanted.after_seq, replay)
            await response.write(sse_frame(ServerFrame(type=T.SESSION_READY, data=ready)))
            try:
                if await self._feeds.join(feed, replay, client) is Joined.LIVE:
                    await client.run()
            except OrchestratorError as exc:
                with contextlib.suppress(ConnectionError):
                    await response.write(sse_frame(error_frame(exc)))
            except ConnectionError as exc:
                logger.debug("SSE stream of session {} dropped: {}", wanted.session_id, exc)
            return response
        finally:
            self._clients.discard(client)
            await self._feeds.close(feed)

    def resync(self) -> None:
        """NATS reconnected: each stream reads what it missed, or ends (the client resumes)."""
        self._feeds.resync()

    async def shutdown(self, _app: web.Application | None = None) -> None:
        """Stop accepting and end every stream, so clients reconnect to another edge."""
        self._accepting = False
        for client in list(self._clients):
            client.end(Unavailable("service restart; reconnect with Last-Event-ID"))
