"""PullConsumer: a durable JetStream pull consumer drained by one supervised loop, N at a time.

The task worker and the webhook delivery both take work this way. The loop takes one free slot
(waiting if none), then as many more as are free right now (at most `batch`), and fetches that
many messages in one pull; each message is handled in a task of its own that gives its slot back
when it ends. A message that does not decode is logged and terminated. A handler's failure on a
NATS error (a store write timed out during a leader election) is logged and its message is
delivered again after `work_retry_delay`; any other failure is logged and leaves its message
unacknowledged, so JetStream redelivers it after the ack wait.

Every slot the loop holds is given back on every way out of a pull (an error, a cancel), so the
supervisor restarts a failed loop with the full capacity. A pull that nobody answers (the
consumer has no leader during an election, or it or its stream was deleted) binds again, in the
loop: each lookup waits `pull_bind_timeout`, and fails over to the next try with a short backoff,
`pull_bind_attempts` tries in all (the same at start-up, where a fresh cluster may still be
forming the consumer's Raft group). Binding creates a deleted consumer anew; if its stream is
gone every try fails, and then the supervisor restarts the loop with backoff (and `/health/ready`
names it) until the stream is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError

from orchestrator.codecs.errors import ValidationFailed
from orchestrator.codecs.wire import decode
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.supervisor import Supervisor, cancel_loops

Handler = Callable[[Msg, Any], Awaitable[None]]


@dataclass(frozen=True)
class PullSpec:
    """What one pull consumer reads, and how much of it at once.

    Its messages are acked one by one, read from the stream's start, and redelivered without
    limit: each owner counts the attempts of a message itself, so a give-up is visible.
    """

    name: str  # the supervised loop's name: in log lines and in /health/ready
    stream: str
    durable: str
    subject: str  # the consumer's filter subject
    ack_wait: float  # seconds before an unacknowledged message goes to another instance
    concurrency: int  # messages handled at once on this instance
    batch: int  # most messages one pull asks for
    kind: type  # what a message holds (a codecs Struct); one that does not decode is dropped

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=-1,
            max_ack_pending=-1,
            filter_subject=self.subject,
        )


class PullConsumer:
    """Runs `handle(msg, value)` on every message of one durable consumer, `spec.concurrency` at
    a time; `value` is the message decoded as `spec.kind`."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: PullSpec,
        settings: OrchestratorSettings,
        handle: Handler,
    ) -> None:
        self._js = js
        self._spec = spec
        self._fetch_wait = settings.task_fetch_wait
        self._retry_wait = settings.nats_reconnect_wait
        self._bind_timeout = settings.pull_bind_timeout
        self._bind_attempts = settings.pull_bind_attempts
        self._bind_backoff = (settings.pull_bind_backoff_initial, settings.pull_bind_backoff_max)
        self._handler_retry = settings.work_retry_delay
        self._handle = handle
        self._slots = asyncio.Semaphore(spec.concurrency)
        self._inflight: set[asyncio.Task] = set()
        self._psub = None
        self._loop_task: asyncio.Task | None = None

    @property
    def capacity(self) -> int:
        """How many messages this instance handles at once."""
        return self._spec.concurrency

    async def start(self, supervisor: Supervisor) -> None:
        """Create (or bind to) the durable consumer and start pulling under supervision."""
        await self._bind()
        self._loop_task = supervisor.run(self._spec.name, self._pull_forever)

    async def stop(self, grace: float) -> None:
        """Stop pulling; give handlers `grace` seconds, then cancel them unacknowledged (JetStream
        redelivers their messages, e.g. to another instance)."""
        if self._loop_task is not None:
            await cancel_loops({self._loop_task})
        await self._unbind()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _bind(self) -> None:
        """Subscribe to the durable consumer, creating it when it does not exist; a try that
        fails or is not answered in time is repeated, `pull_bind_attempts` tries in all."""
        spec = self._spec
        await self._unbind()
        wait, longest = self._bind_backoff
        for attempt in range(1, self._bind_attempts + 1):
            try:
                async with asyncio.timeout(self._bind_timeout):
                    self._psub = await self._js.pull_subscribe(
                        spec.subject, durable=spec.durable, stream=spec.stream,
                        config=spec.config(),
                    )  # fmt: skip
                return
            except (NatsError, TimeoutError) as exc:
                if attempt == self._bind_attempts:
                    raise
                logger.warning(
                    "{}: binding to consumer {} failed ({!r}); try {} of {} in {:.2f}s",
                    spec.name, spec.durable, exc, attempt + 1, self._bind_attempts, wait,
                )  # fmt: skip
                await asyncio.sleep(wait)
                wait = min(wait * 2, longest)

    async def _unbind(self) -> None:
        psub, self._psub = self._psub, None
        if psub is not None:
            with contextlib.suppress(NatsError):
                await psub.unsubscribe()

    async def _pull_forever(self) -> None:
        if self._psub is None:
            await self._bind()  # a restart after a failed bind
        while True:
            try:
                await self._pull_once()
            except ServiceUnavailableError as exc:
                # No one answers pulls for the consumer: a cluster is electing its leader (or it,
                # or its stream, was deleted). Binding again, here, follows the election closely;
                # it creates a deleted consumer again; if the stream is gone it raises in the end,
                # and the supervisor retries with backoff.
                logger.warning(
                    "{}: no answer to a pull ({!r}); binding again", self._spec.name, exc
                )
                await asyncio.sleep(self._bind_backoff[0])  # never a hot loop of 503s
                await self._bind()

    async def _pull_once(self) -> None:
        """Take one free slot (waiting if none) and as many more as are free right now, pull that
        many messages, and hand each its slot; the slots nothing took are given back."""
        taken = 0
        try:
            await self._slots.acquire()
            taken = 1
            while taken < self._spec.batch and not self._slots.locked():
                await self._slots.acquire()
                taken += 1
            for msg in await self._fetch(taken):
                task = asyncio.create_task(self._process(msg))
                taken -= 1  # the handler gives this slot back
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
        finally:
            for _ in range(taken):
                self._slots.release()

    async def _fetch(self, batch: int) -> list[Msg]:
        try:
            return await self._psub.fetch(batch, timeout=self._fetch_wait)
        except (TimeoutError, NatsTimeout):
            return []
        except ServiceUnavailableError:
            raise
        except NatsError as exc:
            logger.warning("{}: fetch failed: {}", self._spec.name, exc)
            await asyncio.sleep(self._retry_wait)
            return []

    async def _process(self, msg: Msg) -> None:
        try:
            try:
                value = decode(msg.data, self._spec.kind)
            except ValidationFailed as exc:
                logger.error("{}: malformed message dropped: {}", self._spec.name, exc.message)
                await msg.term()
                return
            await self._handle(msg, value)
        except asyncio.CancelledError:
            raise
        except NatsError as exc:
            # Transient (the bus, or a stream electing its leader): try again soon rather than
            # after the whole ack wait (a task's lease).
            logger.warning(
                "{}: handling a message failed ({!r}); again in {}s",
                self._spec.name, exc, self._handler_retry,
            )  # fmt: skip
            with contextlib.suppress(NatsError):
                await msg.nak(delay=self._handler_retry)
        except Exception:  # noqa: BLE001 - outermost boundary of one message's handling
            logger.exception(
                "{}: handling a message failed; JetStream will redeliver it", self._spec.name
            )
        finally:
            self._slots.release()
