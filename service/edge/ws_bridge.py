"""`GET /ws/chat/{session_id}?token=...&after_seq=N`: the WebSocket bridge of a chat session."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from loguru import logger

from orchestrator.codecs.actions import GetSession, GetSessionEvents
from orchestrator.codecs.errors import (
    CloseCode,
    OrchestratorError,
    RateLimited,
    Unavailable,
    transport_for,
)
from orchestrator.codecs.frames import ServerFrame, error_frame
from orchestrator.codecs.frames import WebSocketMessageType as T
from orchestrator.codecs.wire import encode
from orchestrator.service.edge.edge_deps import EdgeDeps
from orchestrator.service.edge.live import LiveFeed
from orchestrator.service.edge.routes import convert
from orchestrator.service.edge.session_feed import Joined, SessionFeeds, ready_data
from orchestrator.service.edge.ws_connection import Connection, SocketStats


class WebSocketBridge:
    """Accepts sockets, runs each as a `Connection`, and closes them all with 1012 on shutdown."""

    def __init__(self, deps: EdgeDeps) -> None:
        self._deps = deps
        self.settings = deps.settings
        self.stats = SocketStats()
        self.connections: set[Connection] = set()
        # Open sockets per (tenant, user) are bounded by `ws_max_per_user`.
        self._feeds = SessionFeeds(deps, "WebSockets", "reconnect with after_seq")
        self._accepting = True

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/ws/chat/{session_id}", self.handle)]

    def resync(self) -> None:
        """NATS reconnected: events stored meanwhile missed the live feeds; catch sockets up."""
        self._feeds.resync()

    async def shutdown(self, _app: web.Application | None = None) -> None:
        """Stop accepting, then close every socket with 1012 so clients reconnect elsewhere."""
        self._accepting = False
        closes = [
            c.begin_close(CloseCode.SERVICE_RESTART, "service restart") for c in self.connections
        ]
        if closes:
            await asyncio.wait(closes, timeout=self.settings.ws_close_timeout + 1)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._accepting:
            raise Unavailable("edge is shutting down")
        s = self.settings
        # aiohttp refuses a message of exactly `max_msg_size` bytes; the setting is the largest
        # one accepted.
        ws = web.WebSocketResponse(
            heartbeat=s.ws_heartbeat,
            max_msg_size=s.ws_max_frame_bytes + 1,
            timeout=s.ws_close_timeout,
        )
        await ws.prepare(request)
        try:
            identity = self._deps.verifier.verify(request.query.get("token"))
            query = {"session_id": request.match_info["session_id"]}
            if "after_seq" in request.query:
                query["after_seq"] = request.query["after_seq"]
            wanted = convert(GetSessionEvents, query)
            await self._deps.bus.call(
                "session.get", identity.ctx, GetSession(session_id=wanted.session_id)
            )
        except OrchestratorError as exc:
            # Refused before the session is joined: say why, then close with the mapped code.
            await _refuse(ws, exc, transport_for(exc.code).ws_close_code)
            return ws
        conn = Connection(self._deps, self.stats, request, ws, identity, wanted.session_id)
        try:
            feed = self._feeds.open(identity.ctx, wanted.session_id, conn)
        except RateLimited as refusal:
            await _refuse(ws, refusal, CloseCode.TRY_AGAIN_LATER)
            return ws
        self.connections.add(conn)
        self.stats.accepted += 1
        self._deps.metrics.websocket_opened()
        try:
            await feed.subscribe()
            if await self._join(conn, feed, wanted.after_seq):
                conn.start_live()
                await conn.read()
        except OrchestratorError as exc:
            with contextlib.suppress(ConnectionError):
                await conn.send_now(error_frame(exc))
            conn.begin_close(transport_for(exc.code).ws_close_code, exc.message)
        except ConnectionError as exc:
            logger.debug("WebSocket of session {} dropped: {}", wanted.session_id, exc)
        finally:
            await self._feeds.close(feed)
            await conn.finish()
            self.connections.discard(conn)
            self._deps.metrics.websocket_closed()
        return ws

    async def _join(self, conn: Connection, feed: LiveFeed, after_seq: int) -> bool:
        """`session.ready`, history after `after_seq`, then live without gap or duplicate."""
        replay = await feed.replay(after_seq)
        ready = ready_data(conn.session_id, after_seq, replay)
        await conn.send_now(ServerFrame(type=T.SESSION_READY, data=ready))
        joined = await self._feeds.join(feed, replay, conn)
        if joined is Joined.BEHIND:
            conn.begin_close(CloseCode.SLOW_CONSUMER, "could not catch up with the live events")
        return joined is Joined.LIVE


async def _refuse(ws: web.WebSocketResponse, error: OrchestratorError, code: int) -> None:
    """Say why in an `error` frame, then close with `code`."""
    with contextlib.suppress(ConnectionError):
        await ws.send_str(encode(error_frame(error)).decode())
        await ws.close(code=code, message=error.message.encode()[:120])
