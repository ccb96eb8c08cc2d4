"""One attempt's outgoing stream: parts indexed from 0, text coalesced, heartbeats while it works.

Text is what a model produces token by token, and every part costs the orchestrator a validation
and (per flush) a durable write, so consecutive text is joined before it is published: the first
text of the answer goes out at once (first-token latency is what users feel), later text waits
at most `flush_ms` or until `flush_bytes` have gathered. A tool call or result first sends the
text before it, so the order of the answer is kept. Text longer than `flush_bytes` is split
there (on a UTF-8 character boundary), so no text part is ever larger.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from types import TracebackType
from typing import Any

import msgspec
from loguru import logger
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from orchestrator.codecs.errors import InternalError, PayloadTooLarge, Unavailable
from orchestrator.codecs.execution_messages import (
    ExecutionRequest,
    Heartbeat,
    Part,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)
from orchestrator.codecs.wire import encode


def split_utf8(content: str, max_bytes: int) -> list[str]:
    """`content` cut into pieces of at most `max_bytes` UTF-8 bytes, never inside a character."""
    data = content.encode()
    if len(data) <= max_bytes:
        return [content]
    pieces: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        # Continuation bytes look like 0b10xxxxxx: step back to the start of the character.
        while end < len(data) and end > start and (data[end] & 0xC0) == 0x80:
            end -= 1
        pieces.append(data[start:end].decode())
        start = end
    return pieces


class PartStream:
    """Publishes the parts of one attempt to its `stream_subject`; use as `async with`."""

    def __init__(
        self, nc: Client, request: ExecutionRequest, flush_ms: float, flush_bytes: int
    ) -> None:
        self._nc = nc
        self._subject = request.stream_subject
        self._task_id = request.task_id
        self._attempt = request.attempt
        self._flush_after = flush_ms / 1000
        self._flush_bytes = flush_bytes
        self._heartbeat_every = request.heartbeat_interval
        self._buffer: list[str] = []
        self._buffered_bytes = 0
        self._flush_at = math.inf
        self._text_sent = False
        self._wake = asyncio.Event()
        # Parts are numbered when built and must leave in that order, from two tasks at most.
        self._publishing = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self.sent = 0
        """Parts published so far; also the index of the next one."""

    async def __aenter__(self) -> PartStream:
        if self._heartbeat_every > 0:
            # The first heartbeat says at once that a service took the attempt.
            await self._heartbeat()
        self._ticker = asyncio.create_task(self._tick(), name=f"part-stream-{self._task_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            # asyncio.wait_for (3.11) swallows a cancel that races the end of its inner wait
            # (e.g. text() set the wake event just before): the loop also checks this flag.
            self._closed = True
            self._wake.set()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def text(self, content: str) -> None:
        """Add answer text: sent at once if it is the first, else coalesced."""
        if not content:
            return
        if not self._text_sent:
            self._text_sent = True
            await self._send_text(content)
            return
        self._buffer.append(content)
        self._buffered_bytes += len(content.encode())
        if self._buffered_bytes >= self._flush_bytes or self._flush_after <= 0:
            await self.flush()
        elif self._flush_at == math.inf:
            self._flush_at = time.monotonic() + self._flush_after
            self._wake.set()

    async def tool_call(self, call_id: str, name: str, arguments: dict[str, Any]) -> None:
        """Send a tool call, after the text before it."""
        fields = {"call_id": call_id, "name": name, "arguments": arguments}
        await self._send_part(self._build(ToolCallPart, fields))

    async def tool_result(self, call_id: str, content: str) -> None:
        """Send a tool result, after the text before it."""
        await self._send_part(self._build(ToolResultPart, {"call_id": call_id, "content": content}))

    async def flush(self) -> None:
        """Send the coalesced text now; returns once every part handed over before is sent."""
        async with self._publishing:
            await self._flush_locked()

    async def _send_text(self, content: str) -> None:
        async with self._publishing:
            await self._publish_text(content)

    async def _send_part(self, part: Part) -> None:
        async with self._publishing:
            await self._flush_locked()
            await self._publish(msgspec.structs.replace(part, index=self._next_index()))

    async def _flush_locked(self) -> None:
        self._flush_at = math.inf
        if not self._buffer:
            return
        content = "".join(self._buffer)
        self._buffer.clear()
        self._buffered_bytes = 0
        await self._publish_text(content)

    async def _publish_text(self, content: str) -> None:
        for piece in split_utf8(content, self._flush_bytes):
            index = self._next_index()
            await self._publish(
                TextPart(task_id=self._task_id, attempt=self._attempt, index=index, content=piece)
            )

    def _next_index(self) -> int:
        index = self.sent
        self.sent += 1
        return index

    def _build(self, kind: type[Part], fields: dict[str, Any]) -> Part:
        try:
            return msgspec.convert(
                {"task_id": self._task_id, "attempt": self._attempt, "index": 0, **fields}, kind
            )
        except msgspec.ValidationError as exc:
            raise InternalError(f"the handler yielded an invalid part: {exc}") from None

    async def _heartbeat(self) -> None:
        async with self._publishing:
            await self._publish(Heartbeat(task_id=self._task_id, attempt=self._attempt))

    async def _publish(self, message: Part | Heartbeat) -> None:
        try:
            await self._nc.publish(self._subject, encode(message))
        except MaxPayloadError:
            raise PayloadTooLarge("a part is larger than the server's max_payload") from None
        except NatsError as exc:
            raise Unavailable(f"could not publish to the stream subject: {exc!r}") from None

    async def _tick(self) -> None:
        """Flush coalesced text when it is due and heartbeat, until the attempt ends."""
        every = self._heartbeat_every if self._heartbeat_every > 0 else math.inf
        next_beat = time.monotonic() + every
        while not self._closed:
            self._wake.clear()
            wait = min(next_beat, self._flush_at) - time.monotonic()
            if wait > 0:
                # asyncio.timeout, not wait_for: 3.11's wait_for runs the wait in a new task,
                # one per flush of every streaming answer.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if wait == math.inf else wait):
                        await self._wake.wait()
            now = time.monotonic()
            try:
                if now >= self._flush_at:
                    await self.flush()
                if now >= next_beat:
                    next_beat = now + every
                    await self._heartbeat()
            except (Unavailable, PayloadTooLarge) as exc:
                # The handler's own next send meets the same failure and ends the attempt.
                logger.warning("task {} attempt {}: {}", self._task_id, self._attempt, exc.message)
