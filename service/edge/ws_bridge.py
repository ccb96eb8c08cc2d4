"""`GET /ws/chat/{session_id}?token=...&after_seq=N`: the WebSocket bridge of a chat session."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass
from functools import partial

from aiohttp import web
from loguru import logger
from nats.aio.client import Client

from orchestrator.codecs.actions import GetSession, GetSessionEvents
from orchestrator.codecs.errors import (
    ActionTimeout,
    CloseCode,
    Conflict,
    OrchestratorError,
    RateLimited,
    Unavailable,
    transport_for,
)
from orchestrator.codecs.frames import ServerFrame, SessionReadyData
from orchestrator.codecs.frames import WebSocketMessageType as T
from orchestrator.codecs.wire import encode
from orchestrator.service.edge.auth import TokenVerifier
from orchestrator.service.edge.bus import BusClient
from orchestrator.service.edge.live import LiveFeed
from orchestrator.service.edge.ratelimit import UserLimiter
from orchestrator.service.edge.routes import convert
from orchestrator.service.edge.ws_connection import Connection, error_frame, event_frame
from orchestrator.service.runtime.metrics import Metrics
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.subjects import Subjects


@dataclass
class BridgeStats:
    """Counters for tests and debugging (operators read the OTel metrics)."""

    accepted: int = 0
    slow_consumers: int = 0
    rate_limited: int = 0


class WebSocketBridge:
    """Accepts sockets, runs each as a `Connection`, and closes them all with 1012 on shutdown."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        bus: BusClient,
        verifier: TokenVerifier,
        limiter: UserLimiter,
        settings: OrchestratorSettings,
        supervisor: Supervisor,
        metrics: Metrics,
    ) -> None:
        self.metrics = metrics
        self.supervisor = supervisor
        self.nc = nc
        self.subjects = subjects
        self.bus = bus
        self.verifier = verifier
        self.limiter = limiter
        self.settings = settings
        self.stats = BridgeStats()
        self.connections: set[Connection] = set()
        # Open sockets per (tenant, user): bounded by `ws_max_per_user`.
        self._per_user: Counter[tuple[str, str]] = Counter()
        self._feeds: dict[Connection, LiveFeed] = {}
        self._accepting = True

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/ws/chat/{session_id}", self.handle)]

    def rate_limited(self, scope: str) -> None:
        """Count a frame a rate limit refused (`scope`: `ws_connection` or `user`)."""
        self.stats.rate_limited += 1
        self.metrics.rate_limited(scope)

    def resync(self) -> None:
        """NATS reconnected: events stored meanwhile missed the live feeds; catch sockets up."""
        for conn, feed in list(self._feeds.items()):
            # Supervised: an unexpected failure is logged and the catch-up retried.
            conn.adopt(self.supervisor.run("edge-catch-up", partial(self._catch_up, conn, feed)))

    async def _catch_up(self, conn: Connection, feed: LiveFeed) -> None:
        # The orchestrator may reconnect a little after this edge: retry while it is away.
        for _ in range(self.settings.ws_catch_up_rounds):
            try:
                if await feed.resync(conn.deliver, self.settings.ws_catch_up_rounds):
                    return
                break
            except (Unavailable, ActionTimeout) as exc:
                logger.info("catch-up of session {} waits: {}", conn.session_id, exc.message)
                await asyncio.sleep(self.settings.nats_reconnect_wait)
            except OrchestratorError as exc:
                logger.info("catch-up of session {} failed: {}", conn.session_id, exc.message)
                break
        conn.begin_close(CloseCode.SERVICE_RESTART, "missed live events; resume with after_seq")

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
            identity = self.verifier.verify(request.query.get("token"))
            query = {"session_id": request.match_info["session_id"]}
            if "after_seq" in request.query:
                query["after_seq"] = request.query["after_seq"]
            wanted = convert(GetSessionEvents, query)
            await self.bus.call(
                "session.get", identity.ctx, GetSession(session_id=wanted.session_id)
            )
        except OrchestratorError as exc:
            # Refused before the session is joined: say why, then close with the mapped code.
            with contextlib.suppress(ConnectionError):
                await ws.send_str(_text(error_frame(exc)))
                await ws.close(
                    code=transport_for(exc.code).ws_close_code, message=exc.message.encode()[:120]
                )
            return ws
        user = (identity.ctx.tenant_id, identity.ctx.user_id)
        if self._per_user[user] >= s.ws_max_per_user:
            refusal = RateLimited(f"at most {s.ws_max_per_user} WebSockets per user")
            with contextlib.suppress(ConnectionError):
                await ws.send_str(_text(error_frame(refusal)))
                await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=refusal.message.encode())
            return ws
        self._per_user[user] += 1
        conn = Connection(self, request, ws, identity, wanted.session_id)
        self.connections.add(conn)
        self.stats.accepted += 1
        self.metrics.websocket_opened()
        feed = LiveFeed(
            self.nc, self.subjects, self.bus, identity.ctx, wanted.session_id, s.ws_send_queue
        )
        self._feeds[conn] = feed
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
            self._feeds.pop(conn, None)
            await feed.close()
            await conn.finish()
            self.connections.discard(conn)
            self._per_user[user] -= 1
            if not self._per_user[user]:
                del self._per_user[user]
            self.metrics.websocket_closed()
        return ws

    async def _join(self, conn: Connection, feed: LiveFeed, after_seq: int) -> bool:
        """Replay history after `after_seq`, then go live without gap or duplicate."""
        replay = await feed.replay(after_seq)
        ready = SessionReadyData(
            session_id=conn.session_id,
            after_seq=after_seq,
            last_seq=replay.last_seq,
            recovered=replay.recovered,
            replayed=len(replay.records),
        )
        await conn.send_now(ServerFrame(type=T.SESSION_READY, data=ready))
        last = replay.last_seq
        for _ in range(self.settings.ws_catch_up_rounds):
            for record in replay.records:
                await conn.send_now(event_frame(record))
                if record.event.__struct_config__.tag == T.SESSION_CLOSED:
                    conn.begin_close(CloseCode.NORMAL, "session closed")
                    return False
            if feed.go_live(last, conn.deliver):
                return True
            replay = await feed.replay(last)
            if not replay.recovered:
                raise Conflict("events aged out while catching up; reconnect with after_seq")
            last = replay.last_seq
        conn.begin_close(CloseCode.SLOW_CONSUMER, "could not catch up with the live events")
        return False


def _text(frame: ServerFrame) -> str:
    return encode(frame).decode()
