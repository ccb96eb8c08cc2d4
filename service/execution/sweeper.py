"""Closes sessions past their lifetime or idle timeout, emitting `session.closed` for each.

It also completes closes that were cut short: a session stored as closed whose `session.closed`
event was never written (the append failed or the process died in between) gets it now.
"""

from __future__ import annotations

import asyncio

from loguru import logger

from orchestrator.codecs.errors import NotFound, ValidationFailed
from orchestrator.codecs.records import SessionStatus
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.actions.session_actions import SessionActions
from orchestrator.service.runtime.supervisor import cancel_loops
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.ids import parse_owned_key


class SessionSweeper:
    """Runs on every instance; revision checks and event de-dup ids make concurrent sweeps safe."""

    def __init__(self, wiring: Wiring, actions: SessionActions) -> None:
        self._actions = actions
        self._metrics = wiring.metrics
        self._supervisor = wiring.supervisor
        self._interval = wiring.settings.session_sweep_interval
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = self._supervisor.every("session-sweeper", self._interval, self._pass)

    async def stop(self) -> None:
        if self._task:
            await cancel_loops({self._task})

    async def _pass(self) -> None:
        closed = await self.sweep()
        if closed:
            logger.info("session sweep closed {} expired sessions", closed)

    async def sweep(self) -> int:
        """One pass over every session; returns how many this pass closed (or finished closing)."""
        closed = still_open = 0
        skipped: list[str] = []
        for key in await self._actions.store.all_keys():
            parsed = parse_owned_key(key)
            if parsed is None:
                skipped.append(key)
                continue
            tenant_id, user_id, session_id = parsed
            ctx = ExecutionContext(tenant_id=tenant_id, user_id=user_id)
            try:
                found = await self._actions.store.get(ctx, session_id)
            except NotFound:
                continue
            except ValidationFailed:
                skipped.append(key)
                continue
            if found.value.status is not SessionStatus.OPEN:
                if found.value.close_event_pending:
                    await self._actions.finish_close(ctx, found)
                    closed += 1
                continue
            after = await self._actions.expire_if_due(ctx, found)
            if after.value.status is SessionStatus.OPEN:
                still_open += 1
            else:
                closed += 1
        if skipped:
            # One line per pass, not per key: a bad key must not flood the log every interval.
            logger.warning(
                "session sweep skipped {} malformed keys or values: {}", len(skipped), skipped[:10]
            )
        self._metrics.set_active_sessions(still_open)
        return closed
