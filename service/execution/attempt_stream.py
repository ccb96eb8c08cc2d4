"""The orchestrator's end of one attempt's stream subject: validation and liveness.

Every message an execution service publishes to `ExecutionRequest.stream_subject` is checked
before anything is stored: its size (`ORCH_EXECUTION_PART_MAX_BYTES`), its shape (a known `type`,
strictly decoded), its task and attempt, and for parts the index (exactly the next one expected).
Anything else is dropped and counted with its reason, in the metric
`orchestrator.execution.parts_dropped` and in `DropCounts` (for tests and debugging). Accepted
parts go to the attempt's `ChunkCoalescer`; accepted parts and heartbeats both prove the attempt
alive (`last_seen`). Forged or malformed messages do not.

The subscription holds at most `ORCH_EXECUTION_STREAM_PENDING_MSGS` / `_BYTES` received but not yet
handled; nats-py drops what comes beyond (a slow consumer). Such a drop is counted
(`slow_consumer`) and sets `overflow`: the runner fails the attempt (retryable) at once, rather
than store an answer with a hole in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

from loguru import logger
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from orchestrator.codecs.errors import ValidationFailed
from orchestrator.codecs.execution_messages import ExecutionRequest, Heartbeat, StreamMessage
from orchestrator.codecs.transport import format_of
from orchestrator.codecs.wire import decode
from orchestrator.service.execution.coalescer import ChunkCoalescer
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.wiring import Wiring


class DropReason(StrEnum):
    """Why a stream message was refused (the `reason` label of the metric)."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    WRONG_TASK = "wrong_task"
    WRONG_ATTEMPT = "wrong_attempt"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    AFTER_END = "after_end"
    SLOW_CONSUMER = "slow_consumer"


class DropCounts(Counter[str]):
    """Refused stream messages by reason, across every attempt of one execution client."""


@dataclass(frozen=True)
class StreamLimits:
    """What one attempt's stream subscription accepts: a message's size, and how much may wait."""

    max_bytes: int
    pending_msgs: int
    pending_bytes: int

    @classmethod
    def of(cls, settings: OrchestratorSettings) -> StreamLimits:
        return cls(
            settings.execution_part_max_bytes,
            settings.execution_stream_pending_msgs,
            settings.execution_stream_pending_bytes,
        )


class AttemptStream:
    """Subscribes one attempt's stream subject and feeds its valid parts to the coalescer."""

    def __init__(
        self,
        wiring: Wiring,
        request: ExecutionRequest,
        coalescer: ChunkCoalescer,
        drops: DropCounts,
    ) -> None:
        """Listens on `request.stream_subject` (on `wiring.nc`) for that task and attempt."""
        self._nc = wiring.nc
        self._subject = request.stream_subject
        self._task_id = request.task_id
        self._attempt = request.attempt
        self._limits = StreamLimits.of(wiring.settings)
        self._coalescer = coalescer
        self._metrics = wiring.metrics
        self._drops = drops
        self._sub: Subscription | None = None
        self._closed = False
        self._progress = asyncio.Event()
        self.overflow = asyncio.Event()
        self.received = 0
        self.last_seen = time.monotonic()

    @property
    def subscription(self) -> Subscription | None:
        """The open subscription (None before `open` and after `close`)."""
        return self._sub

    async def open(self) -> None:
        """Subscribe. The SUB goes out before anything published later on this connection, so
        a request sent after this returns cannot be answered with parts nobody hears."""
        self.last_seen = time.monotonic()
        self._sub = await self._nc.subscribe(
            self._subject,
            cb=self._on_message,
            pending_msgs_limit=self._limits.pending_msgs,
            pending_bytes_limit=self._limits.pending_bytes,
        )

    def dropped_slow(self) -> None:
        """nats-py dropped a message of this subscription (over its pending limits)."""
        if not self.overflow.is_set():
            logger.warning(
                "task {} attempt {}: stream messages dropped over the pending limits "
                "(ORCH_EXECUTION_STREAM_PENDING_*); the attempt fails and is retried",
                self._task_id, self._attempt,
            )  # fmt: skip
        self._drop(DropReason.SLOW_CONSUMER)
        self.overflow.set()

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
        if len(msg.data) > self._limits.max_bytes:
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
