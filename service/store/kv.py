"""Revision-checked reads and writes on a KV bucket of msgspec-typed JSON values."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, ServiceUnavailableError
from nats.js.kv import KeyValue

from orchestrator.codecs.errors import Conflict
from orchestrator.codecs.wire import decode, encode
from orchestrator.service.runtime.nats_internals import kv_stream
from orchestrator.service.runtime.settings import OrchestratorSettings

T = TypeVar("T", bound=msgspec.Struct)
R = TypeVar("R")


@dataclass(frozen=True)
class LeaderReads:
    """How reads that must see every acknowledged write ride out a leader election.

    Such reads are answered by the stream leader only (buckets and streams with more than one
    replica do not allow direct gets, which any replica answers, lagging or not). While a leader
    is being elected nobody answers, or JetStream answers 503 at once: each try gives up after
    `timeout` seconds (a 503 is followed by a short, growing wait) and the read is tried again,
    `attempts` times in all.
    """

    attempts: int = 1
    timeout: float | None = None

    @classmethod
    def of(cls, settings: OrchestratorSettings) -> LeaderReads:
        return cls(settings.leader_read_attempts, settings.leader_read_timeout)

    async def read(self, fetch: Callable[[], Awaitable[R]]) -> R:
        """`fetch()`, tried again while no leader answers."""
        for attempt in range(self.attempts):
            try:
                async with asyncio.timeout(self.timeout):
                    return await fetch()
            except (TimeoutError, NatsTimeout):
                if attempt == self.attempts - 1:
                    raise
            except (NoRespondersError, ServiceUnavailableError):
                # Refused at once (no leader yet): wait a little, growing, before the next try.
                if attempt == self.attempts - 1:
                    raise
                await asyncio.sleep(min(0.05 * 2**attempt, self.timeout or 1.0))
        raise AssertionError("unreachable: the last attempt returns or raises")


def _uncounted() -> None:
    """A revision conflict nobody counts."""


@dataclass(frozen=True)
class KvPolicy:
    """How a typed bucket rides out contention: compare-and-set retries with random, growing
    waits (`conflict_backoff` times the try number at most), each conflict told to `on_conflict`
    (a metric), and reads that must see every acknowledged write (`reads`)."""

    conflict_retries: int
    conflict_backoff: float = 0.0
    on_conflict: Callable[[], None] = _uncounted
    reads: LeaderReads = LeaderReads()

    @classmethod
    def of(
        cls, settings: OrchestratorSettings, on_conflict: Callable[[], None] = _uncounted
    ) -> KvPolicy:
        """`ORCH_KV_CONFLICT_*` and `ORCH_LEADER_READ_*`."""
        return cls(
            settings.kv_conflict_retries,
            settings.kv_conflict_backoff,
            on_conflict,
            LeaderReads.of(settings),
        )


class Versioned(msgspec.Struct, Generic[T], frozen=True):
    """A value and the KV revision it was read at."""

    value: T
    revision: int


class TypedBucket(Generic[T]):
    """One KV bucket whose values are JSON-encoded `T`; updates are compare-and-set."""

    def __init__(self, kv: KeyValue, value_type: type[T], policy: KvPolicy) -> None:
        self.kv = kv
        self.reads = policy.reads
        self.value_type = value_type
        self.conflict_retries = policy.conflict_retries
        self.conflict_backoff = policy.conflict_backoff
        self._on_conflict = policy.on_conflict

    async def get(self, key: str) -> Versioned[T] | None:
        """The current value, or None if the key does not exist (or was deleted)."""
        try:
            entry = await self.reads.read(lambda: self.kv.get(key))
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.operation is not None:
            return None
        return Versioned(decode(entry.value, self.value_type), entry.revision)

    async def create(self, key: str, value: T) -> int:
        """Store a new key; `Conflict` if it exists."""
        try:
            return await self.kv.create(key, encode(value))
        except KeyWrongLastSequenceError:
            raise Conflict(f"{key} already exists") from None

    async def put(self, key: str, value: T) -> int:
        return await self.kv.put(key, encode(value))

    async def update(
        self, key: str, mutate: Callable[[T], T | None], current: Versioned[T] | None = None
    ) -> Versioned[T] | None:
        """Apply `mutate` under optimistic concurrency, re-reading and retrying on conflict.

        `mutate` returns the new value, or None to leave the key as it is. Returns what is stored
        now, or None if the key does not exist.
        """
        for attempt in range(self.conflict_retries):
            if current is None:
                current = await self.get(key)
                if current is None:
                    return None
            new = mutate(current.value)
            if new is None:
                return current
            try:
                revision = await self.kv.update(key, encode(new), last=current.revision)
                return Versioned(new, revision)
            except KeyWrongLastSequenceError:
                self._on_conflict()
                current = None
                # Random, growing waits spread out writers that collided, so they stop colliding.
                await asyncio.sleep(random.uniform(0, self.conflict_backoff * (attempt + 1)))
        raise Conflict(f"gave up on {key} after {self.conflict_retries} revision conflicts")


async def matching_keys(kv: KeyValue, pattern: str = ">") -> list[str]:
    """Keys (with a stored value or a delete marker) matching a subject-style pattern.

    Asks the stream for its subjects, filtered by the server, in one call. (nats-py's `keys()`
    reads every key through a watcher, filters by substring on the client, and can end early.)
    """
    js, stream, prefix = kv_stream(kv)
    info = await js.stream_info(stream, subjects_filter=prefix + pattern)
    return [subject[len(prefix) :] for subject in (info.state.subjects or {})]
