"""Agent configs: the `agent_configs` bucket, mirrored in memory by a KV watch per instance."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict

from loguru import logger
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from orchestrator.codecs.agent_configs import AgentConfig, AgentLookup
from orchestrator.codecs.errors import ValidationFailed
from orchestrator.codecs.transport import is_error_reply
from orchestrator.codecs.wire import decode, encode
from orchestrator.service.runtime.supervisor import cancel_loops
from orchestrator.service.runtime.wiring import Wiring


class AgentDirectory:
    """Answers `get(agent_id)` from memory; a KV watch keeps memory equal to the bucket.

    After a NATS reconnect the watch is rebuilt from scratch (ordered consumers do not always
    survive a server restart). A miss falls back to the bucket itself, then to a request on the
    management subject, whose answer (found or not) is cached for `agent_cache_ttl` seconds, at
    most `agent_cache_max_entries` of them: unknown ids a caller makes up cannot grow memory.
    """

    def __init__(self, wiring: Wiring, kv: KeyValue) -> None:
        """`kv`: the `agent_configs` bucket."""
        self._nc = wiring.nc
        self._kv = kv
        self._subjects = wiring.subjects
        self._settings = wiring.settings
        self._supervisor = wiring.supervisor
        self._configs: dict[str, AgentConfig] = {}
        # Insertion-ordered and refreshed on insert, so the first entry is the oldest to expire.
        self._fallback: OrderedDict[str, tuple[float, AgentConfig | None]] = OrderedDict()
        self._rewatch = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = self._supervisor.run("agent-config-watch", self._watch_forever)
        await asyncio.wait_for(self._ready.wait(), self._settings.nats_startup_timeout)

    async def stop(self) -> None:
        if self._task:
            await cancel_loops({self._task})

    def rewatch(self) -> None:
        """Rebuild the watch (called on NATS reconnect)."""
        self._rewatch.set()

    def cached(self, agent_id: str) -> AgentConfig | None:
        return self._configs.get(agent_id)

    def mirrored(self) -> dict[str, AgentConfig]:
        """Every valid agent of the bucket, as the watch last saw it (a copy)."""
        return dict(self._configs)

    async def get(self, agent_id: str) -> AgentConfig | None:
        """The agent's config, or None if no source knows it."""
        config = self._configs.get(agent_id)
        if config is not None:
            return config
        entry = None
        try:
            entry = await self._kv.get(agent_id)
        except (NotFoundError, NatsTimeout):
            entry = None
        if entry is not None and entry.value:
            config = self._parse(agent_id, entry.value)
            if config is not None:
                self._configs[agent_id] = config
                return config
        return await self._from_management(agent_id)

    async def _from_management(self, agent_id: str) -> AgentConfig | None:
        now = time.monotonic()
        hit = self._fallback.get(agent_id)
        if hit and hit[0] > now:
            return hit[1]
        config = None
        try:
            reply = await self._nc.request(
                self._subjects.management_agent_get,
                encode(AgentLookup(agent_id=agent_id)),
                timeout=self._settings.agent_lookup_timeout,
            )
            if reply.data and not is_error_reply(reply.headers):
                config = self._parse(agent_id, reply.data)
        except (NoRespondersError, NatsTimeout):
            config = None
        self._remember(agent_id, config, time.monotonic())
        return config

    @property
    def fallback_size(self) -> int:
        """Management answers cached right now."""
        return len(self._fallback)

    def _remember(self, agent_id: str, config: AgentConfig | None, now: float) -> None:
        self._fallback.pop(agent_id, None)
        self._fallback[agent_id] = (now + self._settings.agent_cache_ttl, config)
        # Expired entries first, then the oldest ones, until the cache is within its size.
        while self._fallback:
            oldest_id, (expires, _) = next(iter(self._fallback.items()))
            if expires > now and len(self._fallback) <= self._settings.agent_cache_max_entries:
                break
            del self._fallback[oldest_id]

    @staticmethod
    def _parse(agent_id: str, raw: bytes) -> AgentConfig | None:
        try:
            return decode(raw, AgentConfig)
        except ValidationFailed as exc:
            logger.warning("agent config {} is invalid and ignored: {}", agent_id, exc.message)
            return None

    async def _watch_forever(self) -> None:
        # NATS trouble is expected (the reconnect handler rebuilds the watch): retried here.
        # Anything else escapes to the supervisor, which logs it and restarts this loop.
        while True:
            self._rewatch.clear()
            try:
                await self._watch_once()
            except (NatsError, TimeoutError) as exc:
                logger.warning("agent config watch failed ({!r}); rebuilding", exc)
                await asyncio.sleep(self._settings.nats_reconnect_wait)

    async def _watch_once(self) -> None:
        watcher = await self._kv.watchall()
        fresh: dict[str, AgentConfig] = {}
        initial = True
        try:
            while not self._rewatch.is_set():
                next_update = asyncio.ensure_future(watcher.updates(timeout=None))
                rewatch = asyncio.ensure_future(self._rewatch.wait())
                done, _ = await asyncio.wait(
                    {next_update, rewatch}, return_when=asyncio.FIRST_COMPLETED
                )
                if next_update not in done:
                    next_update.cancel()
                    break
                rewatch.cancel()
                entry = next_update.result()
                if entry is None:  # end of the initial snapshot
                    if initial:
                        self._configs = fresh
                        initial = False
                        self._ready.set()
                    continue
                target = fresh if initial else self._configs
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    target.pop(entry.key, None)
                    continue
                config = self._parse(entry.key, entry.value)
                if config is None:
                    target.pop(entry.key, None)
                else:
                    target[entry.key] = config
        finally:
            with contextlib.suppress(NatsError):
                await watcher.stop()
