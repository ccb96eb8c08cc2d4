"""The orchestrator's end of one attempt's stream subject: validation and liveness.

Every message an execution service publishes to `ExecutionRequest.stream_subject` is checked
before anything is stored: its size (`ORCH_EXECUTION_PART_MAX_BYTES`), its shape (a known `type`,
strictly decoded), its task and attempt, and for parts the index (exactly the next one expected).
Anything else is dropped and counted with its reason, in the metric
`orchestrator.execution.parts_dropped` and in `DropCounts` (for tests and debugging). Accepted
parts go to the attempt's `ChunkCoalescer`; accepted parts and heartbeats both prove the attempt
alive (`last_seen`). Forged or malformed messages do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from enum import StrEnum

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from orchestrator.codecs.errors import ValidationFailed
from orchestrator.codecs.execution_messages import Heartbeat, StreamMessage
from orchestrator.codecs.transport import format_of
from orchestrator.codecs.wire import decode
from orchestrator.service.execution.coalescer import ChunkCoalescer
from orchestrator.service.runtime.metrics import Metrics


class DropReason(StrEnum):
    """Why a stream message was refused (the `reason` label of the metric)."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    WRONG_TASK = "wrong_task"
    WRONG_ATTEMPT = "wrong_attempt"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    AFTER_END = "after_end"


class DropCounts(Counter[str]):
    """Refused stream messages by reason, across every attempt of one execution client."""


class AttemptStream:
    """Subscribes one attempt's stream subject and feeds its valid parts to the coalescer."""

    def __init__(
        self,
        nc: Client,
        subject: str,
        task_id: str,
        attempt: int,
        max_bytes: int,
        coalescer: ChunkCoalescer,
        metrics: Metrics,
        drops: DropCounts,
    ) -> None:
        self._nc = nc
        self._subject = subject
        self._task_id = task_id
        self._attempt = attempt
        self._max_bytes = max_bytes
        self._coalescer = coalescer
        self._metrics = metrics
        self._drops = drops
        self._sub: Subscription | None = None
        self._closed = False
        self._progress = asyncio.Event()
        self.received = 0
        self.last_seen = time.monotonic()

    async def open(self) -> None:
        """Subscribe. The SUB goes out before anything published later on this connection, so
        a request sent after this returns cannot be answered with parts nobody hears."""
        self.last_seen = time.monotonic()
        self._sub = await self._nc.subscribe(self._subject, cb=self._on_message)

    async def close(self) -> None:
        """Accept nothing more and unsubscribe; later messages on the subject go nowhere."""
        self._closed = True
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def wait_for(self, count: int, timeout: float) -> bool:
        """Whether `count` parts were accepted, waiting up to `timeout` seconds for the rest."""
        deadline = time.monotonic() + timeout
        while self.received < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)
        return True

    def _drop(self, reason: DropReason) -> None:
        self._drops[reason.value] += 1
        self._metrics.part_dropped(reason.value)

    async def _on_message(self, msg: Msg) -> None:
        if self._closed:
            self._drop(DropReason.AFTER_END)
            return
        if len(msg.data) > self._max_bytes:
            self._drop(DropReason.OVERSIZED)
            return
        try:
            message = decode(msg.data, StreamMessage, format_of(msg.headers))
        except ValidationFailed:
            self._drop(DropReason.MALFORMED)
            return
        if message.task_id != self._task_id:
            self._drop(DropReason.WRONG_TASK)
            return
        if message.attempt != self._attempt:
            self._drop(DropReason.WRONG_ATTEMPT)
            return
        if isinstance(message, Heartbeat):
            self.last_seen = time.monotonic()
            return
        if message.index != self.received:
            reason = (
                DropReason.DUPLICATE if message.index < self.received else DropReason.OUT_OF_ORDER
            )
            self._drop(reason)
            return
        self.received += 1
        self.last_seen = time.monotonic()
        self._coalescer.add(message)
        self._progress.set()
