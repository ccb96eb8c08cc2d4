"""Agent configs: the JSON values of the `agent_configs` KV bucket (key = agent id)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import msgspec

from orchestrator.codecs.types import Identifier


class Access(StrEnum):
    """Who may use an agent: its whole tenant, listed users of its tenant, or anyone."""

    TENANT = "tenant"
    USERS = "users"
    PUBLIC = "public"


class BusyPolicy(StrEnum):
    """What a new message does while a turn of its session is still unfinished."""

    ENQUEUE = "enqueue"
    REJECT = "reject"
    INTERRUPT = "interrupt"


class ModelParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: str = "demo"
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.0
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 512
    system_prompt: str = ""
    extra: dict[str, Any] = {}


class AgentLookup(msgspec.Struct, kw_only=True, frozen=True):
    """A request on the management subject for an agent the `agent_configs` bucket lacks."""

    agent_id: Identifier


class AgentConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """An agent config, as stored; execution services get only its `ExecutionAgent` view."""

    tenant_id: Identifier
    name: str = ""
    access: Access = Access.TENANT
    users: list[Identifier] = []
    model: ModelParams = ModelParams()
    enabled: bool = True
    on_busy: BusyPolicy = BusyPolicy.ENQUEUE
    # Receives a signed POST when one of this agent's tasks ends or waits for input; delivered
    # only to an origin listed in ORCH_WEBHOOK_ALLOWED_ORIGINS (docs/webhooks.md).
    webhook_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None

    def allows(self, tenant_id: str, user_id: str) -> bool:
        """Whether a caller of this tenant and user may use the agent."""
        if not self.enabled:
            return False
        if self.access is Access.PUBLIC:
            return True
        if tenant_id != self.tenant_id:
            return False
        return self.access is Access.TENANT or user_id in self.users
