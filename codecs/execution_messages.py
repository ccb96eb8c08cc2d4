"""What the orchestrator and execution services say to each other."""

from __future__ import annotations

import msgspec

from orchestrator.codecs.agent_configs import AgentConfig


class ExecutionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Run one chat task. `task_id` is the idempotency key: retries carry the same one.

    The execution service publishes `chat.chunk` events to `events_subject` (a JetStream subject,
    with `Nats-Msg-Id: <task_id>.chunk.<index>` so a retried stream is stored once), then replies
    with an `ExecutionResult` or an error envelope.
    """

    task_id: str
    session_id: str
    tenant_id: str
    user_id: str
    agent_id: str
    agent: AgentConfig
    content: str
    attempt: int
    events_subject: str


class ExecutionResult(msgspec.Struct, kw_only=True, frozen=True):
    task_id: str
    content: str
    chunks: int = 0


class ExecutionCancel(msgspec.Struct, kw_only=True, frozen=True):
    task_id: str
