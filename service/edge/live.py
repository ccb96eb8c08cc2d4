"""A session's event feed for one client: subscribe live first, replay history, join at the seam.

JetStream republishes every stored event to `<prefix>.live.<session_id>` with its stream sequence
in `Nats-Sequence`. Subscribing before reading history means nothing stored after the history
read can be missed; events seen both ways are dropped by sequence (`seq <= last delivered`).
`session_feed.py` uses it for the WebSocket and the SSE stream alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from orchestrator.codecs.actions import EventRecord, GetSessionEvents
from orchestrator.codecs.errors import Unavailable, ValidationFailed
from orchestrator.codecs.events import SessionEvent
from orchestrator.codecs.transport import SEQUENCE_HEADER
from orchestrator.codecs.wire import decode
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.edge.edge_deps import EdgeDeps
from orchestrator.service.runtime.nats_internals import flush_in_order

PAGE_LIMIT = 100
Deliver = Callable[[EventRecord], None]


def live_record(msg: Msg) -> EventRecord | None:
    """A republished event with its stream sequence; None (logged) if malformed."""
    try:
        seq = int((msg.headers or {})[SEQUENCE_HEADER])
        return EventRecord(seq=seq, event=decode(msg.data, SessionEvent))
    except (KeyError, ValueError, ValidationFailed):
        logger.warning("live event without a sequence or malformed on {}", msg.subject)
        return None


@dataclass
class Replay:
    """History read in pages: the records, whether none aged out, and the last sequence."""

    records: list[EventRecord] = field(default_factory=list)
    recovered: bool = True
    last_seq: int = 0


class LiveFeed:
    """Buffers live events while history is replayed, then hands them to `deliver` in order."""

    def __init__(self, deps: EdgeDeps, ctx: ExecutionContext, session_id: str) -> None:
        """Live events wait in a buffer of at most `ws_send_queue` while history is read."""
        self._nc = deps.nc
        self._subjects = deps.subjects
        self._bus = deps.bus
        self._ctx = ctx
        self.session_id = session_id
        self._buffer_limit = deps.settings.ws_send_queue
        self._buffer: list[EventRecord] = []
        self._overflowed = False
        self._deliver: Deliver | None = None
        self._sub: Subscription | None = None
        self._live = False
        self.last_seq = 0

    async def subscribe(self) -> None:
        """Start buffering live events; the server knows the interest when this returns."""
        try:
            self._sub = await self._nc.subscribe(
                self._subjects.live(self.session_id), cb=self._on_msg
            )
            await flush_in_order(self._nc)
        except (NatsError, TimeoutError) as exc:
            raise Unavailable(f"cannot subscribe to live events: {type(exc).__name__}") from None

    async def replay(self, after_seq: int) -> Replay:
        """Every stored event after `after_seq`, page by page until `more` is false."""
        result = Replay(last_seq=after_seq)
        cursor = after_seq
        while True:
            page = await self._bus.call(
                "session.events",
                self._ctx,
                GetSessionEvents(session_id=self.session_id, after_seq=cursor, limit=PAGE_LIMIT),
            )
            # One page that lost events makes the whole replay partial: the client must know.
            result.recovered = result.recovered and page.recovered
            result.records.extend(page.events)
            cursor = max(cursor, page.last_seq)
            if not page.more or not page.events:
                break
        result.last_seq = cursor
        return result

    def go_live(self, delivered_seq: int, deliver: Deliver) -> bool:
        """Flush buffered events after `delivered_seq` and deliver directly from now on.

        False if the buffer overflowed while replaying: the caller replays again from
        `delivered_seq` (the dropped events are in the stream) and retries.
        """
        self.last_seq = max(self.last_seq, delivered_seq)
        if self._overflowed:
            self._overflowed = False
            self._buffer.clear()
            return False
        buffered, self._buffer = self._buffer, []
        # No await from here on: the switch to direct delivery is atomic for the callback.
        self._deliver = deliver
        self._live = True
        for record in buffered:
            self._emit(record)
        return True

    async def resync(self, deliver: Deliver, rounds: int) -> bool:
        """After a NATS reconnect: deliver what was stored while the subscription was away.

        Core NATS does not redeliver live events lost while disconnected, but they are in the
        stream: buffer live events again, read the stream after the last delivered sequence,
        then rejoin at the seam. False if that failed (events aged out, no catch-up in `rounds`);
        the caller then asks the client to resume with `after_seq`.
        """
        if not self._live:
            self._overflowed = True  # still joining: make the join read the stream once more
            return True
        self._deliver = None  # buffer live events meanwhile; a failed try leaves it so
        for _ in range(rounds):
            replay = await self.replay(self.last_seq)
            if not replay.recovered:
                return False
            for record in replay.records:
                if record.seq > self.last_seq:
                    self.last_seq = record.seq
                    deliver(record)
            if self.go_live(self.last_seq, deliver):
                return True
        return False

    def _emit(self, record: EventRecord) -> None:
        if record.seq <= self.last_seq or self._deliver is None:
            return
        self.last_seq = record.seq
        self._deliver(record)

    async def _on_msg(self, msg: Msg) -> None:
        record = live_record(msg)
        if record is None:
            return
        if self._deliver is not None:
            self._emit(record)
        elif len(self._buffer) >= self._buffer_limit:
            self._overflowed = True
            self._buffer.clear()
        elif not self._overflowed:
            self._buffer.append(record)

    async def close(self) -> None:
        """Unsubscribe; nothing is delivered after this returns."""
        self._deliver = None
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except NatsError as exc:
                logger.debug("unsubscribe from live events failed: {}", exc)
