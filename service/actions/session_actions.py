"""Handlers of the session.* actions: start, get, list, update, close, events."""

from __future__ import annotations

from datetime import datetime, timedelta

from loguru import logger
from msgspec.structs import replace

from orchestrator.codecs.actions import (
    CloseSession,
    EventPage,
    GetSession,
    GetSessionEvents,
    ListSessions,
    SessionPage,
    SessionView,
    StartSession,
    UpdateSession,
    session_view,
)
from orchestrator.codecs.errors import Conflict, Forbidden, NotFound, ValidationFailed
from orchestrator.codecs.events import SessionClosed, SessionStarted
from orchestrator.codecs.records import Session, SessionStatus
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.execution.agent_directory import AgentDirectory
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.ids import new_id, utcnow
from orchestrator.service.store.kv import Versioned
from orchestrator.service.store.sessions import close
from orchestrator.service.store.stores import Stores


class SessionActions:
    """Session lifecycle; every read and write is scoped to the caller's tenant and user."""

    def __init__(self, wiring: Wiring, stores: Stores, agents: AgentDirectory) -> None:
        settings = wiring.settings
        self.store = stores.sessions
        self.slots = stores.slots  # open-session quotas
        self.events = stores.events
        self.agents = agents
        self._ttl = timedelta(seconds=settings.session_ttl)
        self._touch = timedelta(seconds=settings.session_touch_interval)

    def view(self, session: Session) -> SessionView:
        return session_view(session, self.store.idle_expires_at(session))

    async def check_agent(self, ctx: ExecutionContext, agent_id: str) -> None:
        """The agent exists and the caller may use it."""
        config = await self.agents.get(agent_id)
        if config is None:
            raise NotFound(f"agent {agent_id} not found")
        if not config.allows(ctx.tenant_id, ctx.user_id):
            raise Forbidden(f"agent {agent_id} is not available to this user")

    async def start(self, ctx: ExecutionContext, payload: StartSession) -> SessionView:
        await self.check_agent(ctx, payload.agent_id)
        now = utcnow()
        session_id = new_id()
        await self.slots.take(ctx, session_id)
        seq = await self.events.append(
            SessionStarted(session_id=session_id, at=now, agent_id=payload.agent_id),
            msg_id=f"{session_id}.started",
        )
        session = Session(
            session_id=session_id,
            tenant_id=ctx.tenant_id,
            user_id=ctx.user_id,
            agent_id=payload.agent_id,
            created_at=now,
            updated_at=now,
            last_activity_at=now,
            expires_at=now + self._ttl,
            metadata=dict(payload.metadata),
            first_event_seq=seq,
        )
        await self.store.create(session)
        return self.view(session)

    async def open_session(self, ctx: ExecutionContext, session_id: str) -> Versioned[Session]:
        """The caller's session if it is open; an expired one is closed on the spot."""
        found = await self.expire_if_due(ctx, await self.store.get(ctx, session_id))
        if found.value.status is not SessionStatus.OPEN:
            raise Conflict(f"session {session_id} is closed", {"status": found.value.status})
        return found

    async def expire_if_due(
        self, ctx: ExecutionContext, found: Versioned[Session]
    ) -> Versioned[Session]:
        now = utcnow()
        if found.value.status is SessionStatus.OPEN and self.store.expired(found.value, now):
            return await self._close(ctx, found.value.session_id, "expired", found)
        return found

    async def touch(self, ctx: ExecutionContext, found: Versioned[Session]) -> None:
        """Record activity, at most once per `session_touch_interval` to spare KV writes."""
        now = utcnow()
        if now - found.value.last_activity_at < self._touch:
            return

        def mutate(session: Session) -> Session | None:
            if session.status is not SessionStatus.OPEN or session.last_activity_at >= now:
                return None
            return replace(session, last_activity_at=now, updated_at=now)

        await self.store.update(ctx, found.value.session_id, mutate, found)

    async def get(self, ctx: ExecutionContext, payload: GetSession) -> SessionView:
        found = await self.expire_if_due(ctx, await self.store.get(ctx, payload.session_id))
        return self.view(found.value)

    async def list(self, ctx: ExecutionContext, payload: ListSessions) -> SessionPage:
        ids = await self.store.list_ids(ctx)
        if payload.cursor:
            ids = [sid for sid in ids if sid < payload.cursor]
        items: list[SessionView] = []
        for session_id in ids:
            try:
                found = await self.expire_if_due(ctx, await self.store.get(ctx, session_id))
            except NotFound:
                continue  # deleted between listing and reading
            except ValidationFailed as exc:
                # A stored value this version cannot read is the operator's problem, not the
                # caller's: list the others.
                logger.warning("session {} of {}.{} unreadable, not listed: {}",
                               session_id, ctx.tenant_id, ctx.user_id, exc.message)  # fmt: skip
                continue
            if payload.status is None or found.value.status is payload.status:
                items.append(self.view(found.value))
            if len(items) == payload.limit:
                break
        more = bool(items) and items[-1].session_id != (ids[-1] if ids else None)
        return SessionPage(items=items, next_cursor=items[-1].session_id if more else None)

    async def update(self, ctx: ExecutionContext, payload: UpdateSession) -> SessionView:
        found = await self.open_session(ctx, payload.session_id)

        def mutate(session: Session) -> Session:
            if session.status is not SessionStatus.OPEN:
                raise Conflict(f"session {session.session_id} is closed")
            metadata = dict(session.metadata)
            for key, value in payload.metadata.items():
                if value:
                    metadata[key] = value
                else:
                    metadata.pop(key, None)
            if len(metadata) > 32:
                raise ValidationFailed("a session holds at most 32 metadata keys")
            return replace(session, metadata=metadata, updated_at=utcnow())

        stored = await self.store.update(ctx, payload.session_id, mutate, found)
        return self.view(stored.value)

    async def close(self, ctx: ExecutionContext, payload: CloseSession) -> SessionView:
        found = await self.store.get(ctx, payload.session_id)
        return self.view((await self._close(ctx, payload.session_id, payload.reason, found)).value)

    async def _close(
        self, ctx: ExecutionContext, session_id: str, reason: str, found: Versioned[Session]
    ) -> Versioned[Session]:
        now: datetime = utcnow()
        stored = await self.store.update(
            ctx, session_id, lambda session: close(session, now, reason), found
        )
        if stored.value.close_event_pending:
            # Also reached when an earlier close stored the state but not the event: this retry
            # completes it.
            stored = await self.finish_close(ctx, stored)
        return stored

    async def finish_close(
        self, ctx: ExecutionContext, found: Versioned[Session]
    ) -> Versioned[Session]:
        """Store the `session.closed` event of a closed session, then clear its pending flag.

        The state is written first (flag set), then the event and the freed open-session slot,
        the flag cleared last: a crash or failed append anywhere leaves the flag set for the next
        close or sweep to finish. The de-dup id keeps the event single when two instances finish
        the same close (giving the slot back twice is harmless).
        """
        session = found.value
        await self.events.append(
            SessionClosed(
                session_id=session.session_id,
                at=session.closed_at or session.updated_at,
                reason=session.close_reason or "",
            ),
            msg_id=f"{session.session_id}.closed",
        )
        await self.slots.give_back(ctx.tenant_id, ctx.user_id, session.session_id)

        def clear(current: Session) -> Session | None:
            if not current.close_event_pending:
                return None
            return replace(current, close_event_pending=False)

        return await self.store.update(ctx, session.session_id, clear, found)

    async def events_page(self, ctx: ExecutionContext, payload: GetSessionEvents) -> EventPage:
        found = await self.store.get(ctx, payload.session_id)
        return await self.events.read(
            payload.session_id, payload.after_seq, payload.limit, found.value.first_event_seq
        )
