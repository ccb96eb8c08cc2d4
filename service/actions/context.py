"""The execution context of an action: who asks, for which tenant, with which permissions."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.codecs.actions import DEFAULT_PERMISSIONS
from orchestrator.codecs.errors import Forbidden


@dataclass(frozen=True, slots=True)
class ExecutionContext:
    """Built once per action (bus) or per request/connection (edge), checked before anything runs.

    On the bus the context is what the envelope says: NATS permissions decide who may publish
    there. The edge builds it from a verified JWT, never from what a browser sends.
    """

    tenant_id: str
    user_id: str
    permissions: frozenset[str] = frozenset(DEFAULT_PERMISSIONS)
    action_id: str = ""
    correlation_id: str = ""
    # The action id the caller chose (empty when the server made one up): the key that makes a
    # repeated `chat.send` return the first one's task instead of storing a second.
    send_id: str = ""

    def require(self, permission: str) -> None:
        """Raise `Forbidden` unless the caller holds `permission` (or `*`, or `<domain>:*`)."""
        if permission in self.permissions or "*" in self.permissions:
            return
        domain = permission.split(":", 1)[0]
        if f"{domain}:*" in self.permissions:
            return
        raise Forbidden(f"missing permission {permission!r}")

    def owns(self, tenant_id: str, user_id: str) -> bool:
        return self.tenant_id == tenant_id and self.user_id == user_id
