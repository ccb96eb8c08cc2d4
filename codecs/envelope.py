"""The DomainAction envelope: who asks, in which context, and the typed payload."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, TypeVar

import msgspec

from orchestrator.codecs.types import Identifier, Permission

P = TypeVar("P")


class DomainAction(msgspec.Struct, Generic[P], kw_only=True, forbid_unknown_fields=True):
    """Every operation on the bus: an envelope carrying the execution context and a payload.

    On NATS the subject names the action, so `action_type` may be left out; when present it must
    match the subject. `action_id`, `correlation_id` and `created_at` are filled in when absent.
    `permissions` left out means the default user permissions; the edge always sets it from the
    verified JWT.
    """

    tenant_id: Identifier
    user_id: Identifier
    data: P
    action_type: str | None = None
    action_id: Identifier | None = None
    session_id: Identifier | None = None
    correlation_id: Identifier | None = None
    created_at: datetime | None = None
    permissions: list[Permission] | None = None
