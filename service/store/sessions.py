"""Sessions in the `sessions` KV bucket, keyed so one user's sessions list with a key filter."""

from __future__ import annotations

from datetime import datetime, timedelta

from msgspec.structs import replace

from orchestrator.codecs.errors import NotFound
from orchestrator.codecs.records import Session, SessionStatus
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.ids import owned_key
from orchestrator.service.store.kv import TypedBucket, Versioned, matching_keys


class SessionStore:
    """Reads and revision-checked writes of sessions, always scoped to the caller's context."""

    def __init__(self, bucket: TypedBucket[Session], settings: OrchestratorSettings) -> None:
        self.bucket = bucket
        self._idle = timedelta(seconds=settings.session_idle_timeout)

    def idle_expires_at(self, session: Session) -> datetime:
        return session.last_activity_at + self._idle

    def expired(self, session: Session, now: datetime) -> bool:
        """Past its absolute lifetime or idle for longer than the idle timeout."""
        return now >= session.expires_at or now >= self.idle_expires_at(session)

    async def create(self, session: Session) -> int:
        key = owned_key(session.tenant_id, session.user_id, session.session_id)
        return await self.bucket.create(key, session)

    async def get(self, ctx: ExecutionContext, session_id: str) -> Versioned[Session]:
        """The caller's session; another tenant's or user's is indistinguishable from none."""
        found = await self.bucket.get(owned_key(ctx.tenant_id, ctx.user_id, session_id))
        if found is None:
            raise NotFound(f"session {session_id} not found")
        return found

    async def update(self, ctx: ExecutionContext, session_id: str, mutate, current=None):
        """Compare-and-set update of the caller's session (`mutate` may return None: no change)."""
        key = owned_key(ctx.tenant_id, ctx.user_id, session_id)
        stored = await self.bucket.update(key, mutate, current)
        if stored is None:
            raise NotFound(f"session {session_id} not found")
        return stored

    async def list_ids(self, ctx: ExecutionContext) -> list[str]:
        """The caller's session ids, newest first (ids are time-ordered)."""
        prefix = owned_key(ctx.tenant_id, ctx.user_id, "")
        keys = await matching_keys(self.bucket.kv, prefix + "*")
        return sorted((key[len(prefix) :] for key in keys), reverse=True)

    async def all_keys(self) -> list[str]:
        """Every session key (for the expiry sweeper)."""
        return await matching_keys(self.bucket.kv)


def close(session: Session, now: datetime, reason: str) -> Session | None:
    """The closed form of an open session; None if it is already closed."""
    if session.status is not SessionStatus.OPEN:
        return None
    return replace(
        session,
        status=SessionStatus.CLOSED,
        closed_at=now,
        updated_at=now,
        close_reason=reason,
        close_event_pending=True,
    )
