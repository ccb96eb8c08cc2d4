"""The session event stream: append with de-dup ids, read back from any sequence number."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from orchestrator.codecs.actions import EventPage, EventRecord
from orchestrator.codecs.errors import ValidationFailed
from orchestrator.codecs.events import Event, SessionEvent
from orchestrator.codecs.wire import decode, encode
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.subjects import Subjects

MSG_ID_HEADER = "Nats-Msg-Id"
# JetStream sequences are uint64: nothing can follow this one, and the server refuses to look.
_LAST_SEQ = 2**64 - 1


class EventLog:
    """Appends events to `<prefix>.events.<session_id>`; each event's `seq` is its stream sequence.

    Sequences are strictly increasing within a session (not contiguous: the stream is shared by
    all sessions). The stream drops its oldest events first, so a session whose events after `N`
    are all still there is exactly one where nothing after `N` is older than the stream's head.
    """

    def __init__(self, js: JetStreamContext, subjects: Subjects, settings: OrchestratorSettings):
        self._js = js
        self._subjects = subjects
        self._stream = settings.events_stream

    async def append(self, event: Event, msg_id: str | None = None) -> int:
        """Store `event` durably and return its sequence (the original one for a duplicate)."""
        headers = {MSG_ID_HEADER: msg_id} if msg_id else None
        ack = await self._js.publish(
            self._subjects.session_events(event.session_id),
            encode(event),
            stream=self._stream,
            headers=headers,
        )
        return ack.seq

    async def last_seq(self, session_id: str) -> int:
        """The sequence of the session's newest event, 0 if none is stored."""
        try:
            msg = await self._js.get_last_msg(
                self._stream, self._subjects.session_events(session_id), direct=True
            )
        except NotFoundError:
            return 0
        return msg.seq or 0

    async def read(
        self, session_id: str, after_seq: int, limit: int, first_event_seq: int = 0
    ) -> EventPage:
        """Up to `limit` events after `after_seq`; `recovered` is False if some aged out."""
        if after_seq >= _LAST_SEQ:
            return EventPage(events=[], recovered=True, last_seq=after_seq, more=False)
        subject = self._subjects.session_events(session_id)
        info = await self._js.stream_info(self._stream)
        head = info.state.first_seq
        recovered = head <= after_seq + 1 or head <= first_event_seq
        records: list[EventRecord] = []
        cursor = after_seq + 1
        more = False
        while True:
            try:
                msg = await self._js.get_msg(
                    self._stream, seq=cursor, subject=subject, next=True, direct=True
                )
            except NotFoundError:
                break
            if len(records) == limit:
                more = True
                break
            cursor = (msg.seq or cursor) + 1
            try:
                records.append(EventRecord(seq=msg.seq, event=decode(msg.data, SessionEvent)))
            except ValidationFailed:
                continue  # a malformed event from an execution service is skipped, not fatal
        last = records[-1].seq if records else after_seq
        return EventPage(events=records, recovered=recovered, last_seq=last, more=more)
