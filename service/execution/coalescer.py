"""Stores one attempt's accepted parts in the session stream, text coalesced per flush.

Text parts that arrive within `ORCH_STREAM_FLUSH_MS` of the oldest unstored one (or until
`ORCH_STREAM_FLUSH_BYTES` of text is waiting) become one `chat.chunk` event, so the durable cost
of an answer is per flush, not per token. The attempt's first text part is stored at once (the
first words are what a user waits for), and so is every tool part (as `tool.call` /
`tool.result`, after the text before it). One writer task appends events one at a time, in part
order; whatever arrives while an append is awaited joins the next event.

Every event carries the attempt, and its de-dup id names (task, attempt, index of its first
part): `<task>.chunk.<attempt>.<index>`, `<task>.tool.<attempt>.<index>`. Attempt numbers are
never reused for a task, so a part is stored at most once whatever is redelivered or retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from loguru import logger
from nats.errors import Error as NatsError

from orchestrator.codecs.events import ChatChunk, Event, ToolCall, ToolResult
from orchestrator.codecs.execution_messages import ExecutionRequest, Part, TextPart, ToolCallPart
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.event_log import EventLog
from orchestrator.service.store.ids import utcnow


class ChunkCoalescer:
    """The writer of one attempt's events; `stored_text` is the text its chunk events hold."""

    def __init__(
        self, events: EventLog, request: ExecutionRequest, settings: OrchestratorSettings
    ) -> None:
        """Flushes every `stream_flush_ms` or `stream_flush_bytes`, the first text at once."""
        task_id = request.task_id
        self._events = events
        self._session_id = request.session_id
        self._task_id = task_id
        self._attempt = request.attempt
        self._flush_seconds = settings.stream_flush_ms / 1000
        self._flush_bytes = settings.stream_flush_bytes
        self._pending: list[Part] = []
        self._pending_bytes = 0
        self._oldest_pending = 0.0
        self._text_stored = False
        self._closing = False
        self._wake = asyncio.Event()
        self._stored: list[str] = []
        self.events_stored = 0
        self.error: Exception | None = None
        self.failed = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name=f"coalescer-{task_id}")

    @property
    def stored_text(self) -> str:
        """The concatenated text of the chunk events stored so far for this attempt."""
        return "".join(self._stored)

    def add(self, part: Part) -> None:
        """Queue an accepted part (in index order); it is stored by the writer task."""
        if self._closing or self.error is not None:
            return
        if not self._pending:
            self._oldest_pending = time.monotonic()
        self._pending.append(part)
        if isinstance(part, TextPart):
            self._pending_bytes += len(part.content.encode())
        self._wake.set()

    async def close(self, *, flush: bool) -> None:
        """Stop taking parts; store what is queued (`flush`) or drop it, and wait for the writer.

        An append already under way always completes first, so after this returns nothing more
        of this attempt is ever stored.
        """
        if not flush:
            self._pending.clear()
        self._closing = True
        self._wake.set()
        await asyncio.gather(self._writer, return_exceptions=True)

    def abort(self) -> None:
        """Cancel the writer at once (the task running the attempt is being cancelled)."""
        self._closing = True
        self._writer.cancel()

    def _urgent(self) -> bool:
        return (
            self._closing
            or not self._text_stored
            or self._pending_bytes >= self._flush_bytes
            or any(not isinstance(part, TextPart) for part in self._pending)
        )

    async def _write_loop(self) -> None:
        try:
            while True:
                # Only `add` and `close` change what is checked here, and they run while this
                # task awaits: clearing before the wait loses no wake-up.
                if not self._pending:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                deadline = self._oldest_pending + self._flush_seconds
                while not self._urgent() and (left := deadline - time.monotonic()) > 0:
                    self._wake.clear()
                    # asyncio.timeout, not wait_for: no extra task per flush (3.11's wait_for
                    # wraps the wait in one).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._wake.wait()
                batch, self._pending, self._pending_bytes = self._pending, [], 0
                await self._store(batch)
        except (NatsError, TimeoutError) as exc:
            # The attempt cannot be stored as sent: the runner fails it (retryable) on `failed`.
            logger.warning("storing parts of task {} failed: {}", self._task_id, exc)
            self.error = exc
            self._pending.clear()
            self.failed.set()

    async def _store(self, batch: list[Part]) -> None:
        texts: list[TextPart] = []
        for part in batch:
            if isinstance(part, TextPart):
                texts.append(part)
                continue
            if texts:
                await self._store_text(texts)
                texts = []
            await self._append(self._tool_event(part), f"tool.{self._attempt}.{part.index}")
        if texts:
            await self._store_text(texts)

    async def _store_text(self, texts: list[TextPart]) -> None:
        content = "".join(part.content for part in texts)
        first = texts[0].index
        chunk = ChatChunk(
            session_id=self._session_id, at=utcnow(), task_id=self._task_id, index=first,
            content=content, attempt=self._attempt,
        )  # fmt: skip
        await self._append(chunk, f"chunk.{self._attempt}.{first}")
        self._stored.append(content)
        self._text_stored = True

    def _tool_event(self, part: Part) -> Event:
        common = dict(
            session_id=self._session_id, at=utcnow(), task_id=self._task_id,
            attempt=self._attempt, index=part.index, call_id=part.call_id,
        )  # fmt: skip
        if isinstance(part, ToolCallPart):
            return ToolCall(**common, name=part.name, arguments=part.arguments)
        return ToolResult(**common, content=part.content)

    async def _append(self, event: Event, suffix: str) -> None:
        await self._events.append_through_election(event, f"{self._task_id}.{suffix}")
        self.events_stored += 1
