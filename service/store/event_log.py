"""The session event stream: append with de-dup ids, read back from any sequence number."""

from __future__ import annotations

import asyncio
import time
from functools import partial

from loguru import logger
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from orchestrator.codecs.actions import EventPage, EventRecord
from orchestrator.codecs.errors import Unavailable, ValidationFailed
from orchestrator.codecs.events import Event, SessionEvent
from orchestrator.codecs.transport import MSG_ID_HEADER
from orchestrator.codecs.wire import decode, encode
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.kv import LeaderReads
from orchestrator.subjects import Subjects

# What JetStream answers while a stream has no leader: nobody (timeout) or 503 at once.
NO_LEADER = (
    NoStreamResponseError,
    NoRespondersError,
    ServiceUnavailableError,
    TimeoutError,
    NatsTimeout,
)
# JetStream sequences are uint64: nothing can follow this one, and the server refuses to look.
_LAST_SEQ = 2**64 - 1
# Room in a reply for the envelope and the page's own fields around the events.
PAGE_OVERHEAD_BYTES = 4096


class EventLog:
    """Appends events to `<prefix>.events.<session_id>`; each event's `seq` is its stream sequence.

    Sequences are strictly increasing within a session (not contiguous: the stream is shared by
    all sessions). Events leave by age (oldest first across the stream) or, past
    `events_max_per_session`, a session's own oldest: so a session's events after `N` are all
    there when nothing after `N` is older than the stream's head, unless the session holds its
    maximum (then its oldest may have gone, and a read from before its first is not recovered).
    """

    def __init__(self, js: JetStreamContext, subjects: Subjects, settings: OrchestratorSettings):
        self._js = js
        self._subjects = subjects
        self._stream = settings.events_stream
        self._per_session = settings.events_max_per_session
        self._settings = settings
        # A page is a reply: it must fit in one NATS message.
        self._page_bytes = max(1024, settings.max_message_bytes - PAGE_OVERHEAD_BYTES)
        self._reads = LeaderReads.of(settings)
        # Direct gets are answered by any replica, lagging or not: only safe with one.
        self._direct = settings.replicas == 1

    async def append(self, event: Event, msg_id: str | None = None) -> int:
        """Store `event` durably and return its sequence (the original one for a duplicate)."""
        try:
            return await self._publish(event, msg_id, None)
        except APIError as exc:
            raise _refused(exc) from None

    async def append_through_election(self, event: Event, msg_id: str) -> int:
        """`append`, tried again while the stream has no leader, for `event_append_patience`
        seconds (each try waits `event_append_timeout`); `msg_id` makes a repeat harmless.

        For what an execution attempt stores: failing it over an election would spend an
        execution retry, and the task's answer would wait for the next attempt.
        """
        settings = self._settings
        deadline = time.monotonic() + settings.event_append_patience
        wait = settings.event_append_backoff_initial
        while True:
            try:
                return await self._publish(event, msg_id, settings.event_append_timeout)
            except NO_LEADER as exc:
                if time.monotonic() + wait >= deadline:
                    raise
                logger.warning(
                    "event {} not stored ({}); trying again in {:.2f}s",
                    msg_id, type(exc).__name__, wait,
                )  # fmt: skip
                await asyncio.sleep(wait)
                wait = min(wait * 2, settings.event_append_backoff_max)
            except APIError as exc:
                raise _refused(exc) from None

    async def _publish(self, event: Event, msg_id: str | None, timeout: float | None) -> int:
        headers = {MSG_ID_HEADER: msg_id} if msg_id else None
        ack = await self._js.publish(
            self._subjects.session_events(event.session_id),
            encode(event),
            timeout=timeout,
            stream=self._stream,
            headers=headers,
        )
        return ack.seq

    async def _kept_after(self, subject: str, after_seq: int, first_event_seq: int) -> bool:
        """A session at its maximum: whether none of its events after `after_seq` was removed.

        Its removed events all precede its oldest kept one; if that is still its first event,
        none was removed. (Conservative: a reader between the last removed and the oldest kept
        event is told it missed some.)
        """
        try:
            oldest = await self._reads.read(
                partial(
                    self._js.get_msg, self._stream, seq=1, subject=subject, next=True,
                    direct=self._direct,
                )
            )  # fmt: skip
        except NotFoundError:
            return True
        oldest_seq = oldest.seq or 0
        return oldest_seq <= first_event_seq or after_seq >= oldest_seq

    async def last_seq(self, session_id: str) -> int:
        """The sequence of the session's newest event, 0 if none is stored."""
        try:
            subject = self._subjects.session_events(session_id)
            msg = await self._reads.read(
                lambda: self._js.get_last_msg(self._stream, subject, direct=self._direct)
            )
        except NotFoundError:
            return 0
        return msg.seq or 0

    async def read(
        self, session_id: str, after_seq: int, limit: int, first_event_seq: int = 0
    ) -> EventPage:
        """Up to `limit` events after `after_seq`, within the page byte budget; `recovered` is
        False if some were removed."""
        if after_seq >= _LAST_SEQ:
            return EventPage(events=[], recovered=True, last_seq=after_seq, more=False)
        subject = self._subjects.session_events(session_id)
        info = await self._reads.read(
            lambda: self._js.stream_info(self._stream, subjects_filter=subject)
        )
        head = info.state.first_seq
        recovered = head <= after_seq + 1 or head <= first_event_seq
        if (info.state.subjects or {}).get(subject, 0) >= self._per_session:
            recovered = recovered and await self._kept_after(subject, after_seq, first_event_seq)
        records: list[EventRecord] = []
        cursor = after_seq + 1
        more = False
        size = 0
        while True:
            try:
                msg = await self._reads.read(
                    partial(
                        self._js.get_msg, self._stream, seq=cursor, subject=subject, next=True,
                        direct=self._direct,
                    )
                )  # fmt: skip
            except NotFoundError:
                break
            size += len(msg.data or b"")
            if len(records) == limit or (records and size > self._page_bytes):
                more = True
                break
            cursor = (msg.seq or cursor) + 1
            try:
                records.append(EventRecord(seq=msg.seq, event=decode(msg.data, SessionEvent)))
            except ValidationFailed:
                continue  # a malformed event from an execution service is skipped, not fatal
        last = records[-1].seq if records else after_seq
        return EventPage(events=records, recovered=recovered, last_seq=last, more=more)


def _refused(exc: APIError) -> Unavailable:
    # The stream refuses new events when full (it never evicts anyone's history).
    return Unavailable(f"session events not stored: {exc.description}")
