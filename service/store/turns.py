"""Turn queues and send receipts, kept beside the tasks in the `tasks` KV bucket.

A user's turn queue (`<tenant>.<user>.turns.queue`) lists their unfinished turns in acceptance
order; the first entry of a session is that session's head, the only one with a work item. A
send receipt (`<tenant>.<user>.sends.<digest>`) maps a client's send id, scoped to the session,
to the task it created. Both key shapes have four tokens, so they never meet a task key (three).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta

from nats.js.errors import KeyWrongLastSequenceError

from orchestrator.codecs.agent_configs import BusyPolicy
from orchestrator.codecs.errors import Conflict, RateLimited
from orchestrator.codecs.records import QueuedTurn, SendReceipt, TurnQueue
from orchestrator.service.store.kv import TypedBucket

QUEUE_KEY_PATTERN = "*.*.turns.queue"


def queue_key(tenant_id: str, user_id: str) -> str:
    return f"{tenant_id}.{user_id}.turns.queue"


def parse_queue_key(key: str) -> tuple[str, str] | None:
    """(tenant, user) of a turn-queue key, or None for any other key."""
    parts = key.split(".")
    if len(parts) != 4 or parts[2:] != ["turns", "queue"]:
        return None
    return parts[0], parts[1]


def receipt_key(tenant_id: str, user_id: str, session_id: str, send_id: str) -> str:
    """A send id is any string the client chose: hashed into one key token, per session."""
    digest = hashlib.sha256(f"{session_id}\n{send_id}".encode()).hexdigest()[:40]
    return f"{tenant_id}.{user_id}.sends.{digest}"


class TurnQueues:
    """Compare-and-set updates of a user's turn queue; the queue's length is the in-flight bound."""

    def __init__(self, bucket: TypedBucket[TurnQueue], limit: int) -> None:
        self.bucket = bucket
        self.limit = limit

    async def _upsert(self, key: str, mutate: Callable[[TurnQueue], TurnQueue | None]) -> TurnQueue:
        for _ in range(self.bucket.conflict_retries):
            found = await self.bucket.get(key)
            if found is None:
                new = mutate(TurnQueue())
                if new is None:
                    return TurnQueue()
                try:
                    await self.bucket.create(key, new)
                    return new
                except Conflict:
                    continue  # created meanwhile: update it instead
            stored = await self.bucket.update(key, mutate, found)
            if stored is not None:
                return stored.value
        raise Conflict(f"gave up on {key} after {self.bucket.conflict_retries} attempts")

    async def reserve(
        self, tenant_id: str, user_id: str, turn: QueuedTurn, busy: BusyPolicy
    ) -> list[QueuedTurn]:
        """Queue `turn` (idempotent); returns the session's unfinished turns queued before it.

        Raises `RateLimited` when the user already has `limit` unfinished turns, and `Conflict`
        when the session has one and its agent's policy is `reject`: then nothing is stored.
        """
        earlier: list[QueuedTurn] = []

        def mutate(queue: TurnQueue) -> TurnQueue | None:
            nonlocal earlier
            ids = [t.task_id for t in queue.turns]
            if turn.task_id in ids:  # a retried send that got this far before
                before = queue.turns[: ids.index(turn.task_id)]
                earlier = [t for t in before if t.session_id == turn.session_id]
                return None
            earlier = [t for t in queue.turns if t.session_id == turn.session_id]
            if earlier and busy is BusyPolicy.REJECT:
                raise Conflict(
                    f"session {turn.session_id} has an unfinished turn",
                    {"task_id": earlier[0].task_id, "on_busy": busy.value},
                )
            if len(queue.turns) >= self.limit:
                raise RateLimited(
                    f"at most {self.limit} unfinished turns per user", {"limit": self.limit}
                )
            return TurnQueue(turns=[*queue.turns, turn])

        await self._upsert(queue_key(tenant_id, user_id), mutate)
        return earlier

    async def remove(self, tenant_id: str, user_id: str, task_id: str) -> TurnQueue:
        """Take a finished (or abandoned) turn out of the queue; returns the queue after it."""

        def mutate(queue: TurnQueue) -> TurnQueue | None:
            if all(t.task_id != task_id for t in queue.turns):
                return None
            return TurnQueue(turns=[t for t in queue.turns if t.task_id != task_id])

        return await self._upsert(queue_key(tenant_id, user_id), mutate)

    async def ensure(self, tenant_id: str, user_id: str, turn: QueuedTurn) -> TurnQueue:
        """Put back a turn dropped while its intake stalled (no limit, no busy policy)."""

        def mutate(queue: TurnQueue) -> TurnQueue | None:
            if any(t.task_id == turn.task_id for t in queue.turns):
                return None
            return TurnQueue(turns=[*queue.turns, turn])

        return await self._upsert(queue_key(tenant_id, user_id), mutate)

    async def read(self, tenant_id: str, user_id: str) -> TurnQueue:
        found = await self.bucket.get(queue_key(tenant_id, user_id))
        return found.value if found else TurnQueue()

    async def head(self, tenant_id: str, user_id: str, session_id: str) -> QueuedTurn | None:
        """The session's oldest unfinished turn, or None."""
        return head_of(await self.read(tenant_id, user_id), session_id)


def head_of(queue: TurnQueue, session_id: str) -> QueuedTurn | None:
    return next((t for t in queue.turns if t.session_id == session_id), None)


class SendReceipts:
    """Which task a client's send id created, for `window` seconds: a repeat stores nothing."""

    def __init__(self, bucket: TypedBucket[SendReceipt], window: float) -> None:
        self.bucket = bucket
        self.window = timedelta(seconds=window)

    async def claim(self, key: str, receipt: SendReceipt, now: datetime) -> SendReceipt:
        """Store `receipt` unless a live one exists; returns the one that holds (maybe earlier)."""
        for _ in range(self.bucket.conflict_retries):
            found = await self.bucket.get(key)
            if found is None:
                try:
                    await self.bucket.create(key, receipt)
                    return receipt
                except Conflict:
                    continue  # the same id sent twice at once: read the other one
            # An expired receipt is replaced: after the window the same id starts a new task.
            stored = await self.bucket.update(
                key, lambda held: receipt if now - held.at >= self.window else None, found
            )
            if stored is not None:
                return stored.value
        raise Conflict(f"gave up on {key} after {self.bucket.conflict_retries} attempts")

    async def find(self, key: str, now: datetime) -> SendReceipt | None:
        """The live receipt under `key`, or None."""
        found = await self.bucket.get(key)
        if found is None or now - found.value.at >= self.window:
            return None
        return found.value

    async def release(self, key: str, task_id: str) -> None:
        """Forget a refused send's receipt, so the same id may be sent again later."""
        found = await self.bucket.get(key)
        if found is not None and found.value.task_id == task_id:
            with contextlib.suppress(KeyWrongLastSequenceError):  # reused meanwhile: keep that
                await self.bucket.kv.delete(key, last=found.revision)
