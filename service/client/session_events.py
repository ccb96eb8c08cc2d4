"""SessionEvents: a session's events from a sequence on, stored then live, resuming by itself.

It subscribes to the session's live subject first and then reads the stored events after the
last sequence it delivered (`session.events`), so nothing stored after a read is missed; an event
seen both ways is delivered once (by sequence, which grows along the stream). Core NATS does not
replay live events lost while the connection was away, so after a reconnect (nats-py's reconnect
count moved), after too many unread live events, or after `ORCH_CLIENT_EVENTS_POLL` without one,
it reads the stream again from the last delivered sequence (it looks at the reconnect count every
`ORCH_CLIENT_RECONNECT_CHECK` while it waits). While NATS or the orchestrator does
not answer it waits and reads again (`ORCH_CLIENT_RETRY_*`), so iteration simply continues once
they are back.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from orchestrator.codecs.actions import EventPage, EventRecord
from orchestrator.codecs.errors import ActionTimeout, Unavailable
from orchestrator.service.edge.live import live_record
from orchestrator.service.runtime.nats_internals import flush_in_order
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.subjects import Subjects

ReadPage = Callable[[str, int], Awaitable[EventPage]]


class SessionEvents:
    """Async iterator of `EventRecord`s; `recovered` turns false if some events aged out."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        read_page: ReadPage,
        session_id: str,
        after_seq: int,
        settings: OrchestratorSettings,
    ) -> None:
        self._nc = nc
        self._subject = subjects.live(session_id)
        self._read_page = read_page
        self._session_id = session_id
        self._poll = settings.client_events_poll
        self._reconnect_check = settings.client_reconnect_check
        self._buffer_limit = settings.client_events_buffer
        self._retry_initial = settings.client_retry_initial
        self._retry_max = settings.client_retry_max
        self._sub: Subscription | None = None
        self._stored: deque[EventRecord] = deque()
        self._live: deque[EventRecord] = deque()
        self._arrived = asyncio.Event()
        self._must_read = True
        self._reconnects = 0
        self._closed = False
        self.last_seq = after_seq
        self.recovered = True

    async def __aenter__(self) -> SessionEvents:
        await self._subscribe()
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> SessionEvents:
        return self

    async def __anext__(self) -> EventRecord:
        if self._sub is None and not self._closed:
            await self._subscribe()
        while not self._closed:
            if self._stored:
                record = self._stored.popleft()
            elif self._reconnected() or self._must_read:
                await self._read()
                continue
            elif self._live:
                record = self._live.popleft()
            else:
                await self._wait()
                continue
            if record.seq > self.last_seq:
                self.last_seq = record.seq
                return record
        raise StopAsyncIteration

    async def close(self) -> None:
        """Stop: unsubscribe; iteration ends."""
        self._closed = True
        self._arrived.set()
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except NatsError as exc:
                logger.debug("unsubscribe from live events failed: {}", exc)

    async def _wait(self) -> None:
        """Until a live event arrives, the connection came back, or it was quiet too long."""
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + self._poll
        self._arrived.clear()
        while not self._arrived.is_set() and not self._closed:
            left = quiet_until - loop.time()
            if left <= 0:
                self._must_read = True  # quiet for a while: make sure nothing was lost
                return
            # nats-py offers no reconnect event per subscriber: look at its count now and then.
            if self._nc.stats.get("reconnects", 0) != self._reconnects:
                return
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, self._reconnect_check))
            except TimeoutError:
                continue

    def _reconnected(self) -> bool:
        count = self._nc.stats.get("reconnects", 0)
        changed, self._reconnects = count != self._reconnects, count
        return changed

    async def _subscribe(self) -> None:
        self._reconnects = self._nc.stats.get("reconnects", 0)
        self._sub = await self._nc.subscribe(self._subject, cb=self._on_msg)
        await flush_in_order(self._nc)  # the server knows the interest before the first read

    async def _read(self) -> None:
        """One page after the last delivered sequence; waits and retries while unreachable."""
        wait = self._retry_initial
        self._must_read = False  # a live overflow during the read sets it again
        while not self._closed:
            try:
                page = await self._read_page(self._session_id, self.last_seq)
                break
            except (Unavailable, ActionTimeout) as exc:
                logger.info("session events unreachable ({}); reading again in {}s", exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, self._retry_max)
        else:
            return
        self.recovered = self.recovered and page.recovered
        self._stored.extend(page.events)
        self._must_read = self._must_read or (page.more and bool(page.events))

    async def _on_msg(self, msg: Msg) -> None:
        record = live_record(msg)
        if record is None:
            return
        if len(self._live) >= self._buffer_limit:
            self._live.clear()
            self._must_read = True  # the dropped ones are in the stream
        self._live.append(record)
        self._arrived.set()
