"""Open-session quotas: one key per open session in the `session_slots` bucket.

A session takes its slot `<tenant>.<user>.<session_id>` when it starts and gives it back when it
closes (the key is purged from the stream, leaving no tombstone, so counting stays exact). A
slot whose release was lost (a crash between close and release) expires with the bucket's max
age, the longest a session can stay open. A user's slots are counted from the stream's subject
list for their filter (one request, at most the per-user limit of subjects); a tenant's with
one JetStream consumer create and delete: a consumer delivering the last message per subject of
a filter has as many pending messages as the filter has keys.

Concurrent starts of one user may pass the check together and exceed the limit by as many as
raced; the limit bounds what one user or tenant holds, not a strict invariant.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from orchestrator.codecs.errors import Conflict
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.ids import owned_key
from orchestrator.subjects import Subjects

# A counting consumer left behind by a crash removes itself after this many seconds.
_COUNTER_INACTIVE_SECONDS = 30.0


class SessionSlots:
    """Takes and gives back open-session slots, refusing past the per-user and per-tenant limits."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, settings: OrchestratorSettings) -> None:
        self._js = js
        self._kv = kv
        self._bucket = settings.session_slots_bucket
        self._stream = Subjects.kv_stream(self._bucket)
        self._per_user = settings.max_open_sessions_per_user
        self._per_tenant = settings.max_open_sessions_per_tenant

    async def count(self, key_filter: str) -> int:
        """How many slots match `key_filter` (KV key wildcards)."""
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            filter_subject=Subjects.kv_subject(self._bucket, key_filter),
            headers_only=True,
            inactive_threshold=_COUNTER_INACTIVE_SECONDS,
        )
        info = await self._js.add_consumer(self._stream, config)
        try:
            return info.num_pending or 0
        finally:
            try:
                await self._js.delete_consumer(self._stream, info.name)
            except NotFoundError:
                pass

    async def count_few(self, key_filter: str) -> int:
        """How many slots match `key_filter`, where few can (the subjects come back listed)."""
        info = await self._js.stream_info(
            self._stream, subjects_filter=Subjects.kv_subject(self._bucket, key_filter)
        )
        return len(info.state.subjects or {})

    async def take(self, ctx: ExecutionContext, session_id: str) -> None:
        """The caller's slot for a new session; `Conflict` when the user or tenant is full."""
        tenant, user = ctx.tenant_id, ctx.user_id
        if await self.count_few(owned_key(tenant, user, "*")) >= self._per_user:
            raise Conflict(
                f"at most {self._per_user} open sessions per user: close one first",
                {"limit": self._per_user, "scope": "user"},
            )
        if await self.count(owned_key(tenant, "*", "*")) >= self._per_tenant:
            raise Conflict(
                f"at most {self._per_tenant} open sessions per tenant: close one first",
                {"limit": self._per_tenant, "scope": "tenant"},
            )
        await self._kv.put(owned_key(tenant, user, session_id), b"")

    async def give_back(self, tenant_id: str, user_id: str, session_id: str) -> None:
        """Remove the session's slot without a tombstone (idempotent)."""
        subject = Subjects.kv_subject(self._bucket, owned_key(tenant_id, user_id, session_id))
        await self._js.purge_stream(self._stream, subject=subject)
