"""Following a session's events for one client: what the WebSocket and the SSE stream share.

A transport opens a feed for its client (`SessionFeeds.open`: the per-user bound, then the live
subscription of `live.py`), replays what the client has not seen and joins the live events at
the seam without gap or duplicate (`join`); from then on each new event reaches the client's
`Follower.deliver`. After a NATS reconnect `resync` catches every open feed up, supervised, or
tells the follower it is lost so that its client resumes. A transport only frames: WebSocket
frames or SSE events.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Protocol

from loguru import logger

from orchestrator.codecs.actions import EventRecord
from orchestrator.codecs.errors import (
    ActionTimeout,
    Conflict,
    OrchestratorError,
    RateLimited,
    Unavailable,
)
from orchestrator.codecs.frames import SessionReadyData
from orchestrator.codecs.frames import WebSocketMessageType as T
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.edge.edge_deps import EdgeDeps
from orchestrator.service.edge.live import LiveFeed, Replay


class Follower(Protocol):
    """One client's end of a feed, as its transport frames it."""

    async def write(self, record: EventRecord) -> None:
        """Send a replayed event while joining (at the client's pace)."""

    def deliver(self, record: EventRecord) -> None:
        """Queue a live event, in sequence order."""

    def lost(self) -> None:
        """Live events were missed and could not be caught up: end, so the client resumes."""


class Joined(Enum):
    """How a join ended: live, at the session's `session.closed`, or still behind."""

    LIVE = "live"
    CLOSED = "closed"
    BEHIND = "behind"


def ready_data(session_id: str, after_seq: int, replay: Replay) -> SessionReadyData:
    """`session.ready` data: where the replay starts and ends, and whether events aged out."""
    return SessionReadyData(
        session_id=session_id,
        after_seq=after_seq,
        last_seq=replay.last_seq,
        recovered=replay.recovered,
        replayed=len(replay.records),
    )


def is_closing(record: EventRecord) -> bool:
    """True for the session's last event."""
    return record.event.__struct_config__.tag == T.SESSION_CLOSED


@dataclass
class _Open:
    user: tuple[str, str]
    follower: Follower
    catch_ups: set[asyncio.Task] = field(default_factory=set)


class SessionFeeds:
    """The open feeds of one transport: bounded per user, joined, caught up after a reconnect."""

    def __init__(self, deps: EdgeDeps, name: str, resume_hint: str) -> None:
        """`name` says what a feed is to the user ("WebSockets", "streams"); `resume_hint` how
        its client resumes (ends the message of a catch-up that lost events)."""
        self._deps = deps
        self._name = name
        self._resume_hint = resume_hint
        self._rounds = deps.settings.ws_catch_up_rounds
        self._open: dict[LiveFeed, _Open] = {}
        self._per_user: Counter[tuple[str, str]] = Counter()

    def open(self, ctx: ExecutionContext, session_id: str, follower: Follower) -> LiveFeed:
        """A feed of `session_id` for `follower`, not yet subscribed; `rate_limited` beyond
        `ws_max_per_user` open feeds of this transport per user. Close it with `close`."""
        limit = self._deps.settings.ws_max_per_user
        user = (ctx.tenant_id, ctx.user_id)
        if self._per_user[user] >= limit:
            raise RateLimited(f"at most {limit} {self._name} per user")
        self._per_user[user] += 1
        feed = LiveFeed(self._deps, ctx, session_id)
        self._open[feed] = _Open(user, follower)
        return feed

    async def close(self, feed: LiveFeed) -> None:
        """Stop following: its catch-up is cancelled, nothing is delivered after this returns."""
        opened = self._open.pop(feed, None)
        if opened is not None:
            for task in opened.catch_ups:
                task.cancel()
            self._per_user[opened.user] -= 1
            if not self._per_user[opened.user]:
                del self._per_user[opened.user]
        await feed.close()

    async def join(self, feed: LiveFeed, replay: Replay, follower: Follower) -> Joined:
        """Write `replay` (the first read after the client's resume point), then go live
        without gap or duplicate, reading again what the live buffer could not hold."""
        records, last = replay.records, replay.last_seq
        for _ in range(self._rounds):
            for record in records:
                await follower.write(record)
                if is_closing(record):
                    return Joined.CLOSED
            if feed.go_live(last, follower.deliver):
                return Joined.LIVE
            replay = await feed.replay(last)
            if not replay.recovered:
                raise Conflict(f"events aged out while catching up; {self._resume_hint}")
            records, last = replay.records, replay.last_seq
        return Joined.BEHIND

    def resync(self) -> None:
        """NATS reconnected: events stored meanwhile missed the live feeds; catch each one up."""
        for feed, opened in list(self._open.items()):
            # Supervised: an unexpected failure is logged and the catch-up retried.
            loop = partial(self._catch_up, feed, opened.follower)
            task = self._deps.supervisor.run("edge-catch-up", loop)
            opened.catch_ups.add(task)
            task.add_done_callback(opened.catch_ups.discard)

    async def _catch_up(self, feed: LiveFeed, follower: Follower) -> None:
        # The orchestrator may reconnect a little after this edge: retry while it is away.
        for _ in range(self._rounds):
            try:
                if await feed.resync(follower.deliver, self._rounds):
                    return
                break
            except (Unavailable, ActionTimeout) as exc:
                logger.info("catch-up of session {} waits: {}", feed.session_id, exc.message)
                await asyncio.sleep(self._deps.settings.nats_reconnect_wait)
            except OrchestratorError as exc:
                logger.info("catch-up of session {} failed: {}", feed.session_id, exc.message)
                break
        follower.lost()
