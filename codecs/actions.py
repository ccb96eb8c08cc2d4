"""Every DomainAction type: its payload, its reply, and whether it is a command or a query."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from orchestrator.codecs.agent_configs import Access, BusyPolicy
from orchestrator.codecs.errors import ErrorBody
from orchestrator.codecs.events import SessionEvent
from orchestrator.codecs.execution_messages import InputRequest
from orchestrator.codecs.records import ChatTask, Session, SessionStatus, TaskStatus
from orchestrator.codecs.types import Content, Cursor, Identifier, Metadata

PageLimit = Annotated[int, msgspec.Meta(ge=1, le=100)]
Sequence = Annotated[int, msgspec.Meta(ge=0)]


class Payload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Base of every action payload: strict, immutable."""


class StartSession(Payload):
    agent_id: Identifier
    metadata: Metadata = {}


class GetSession(Payload):
    session_id: Identifier


class ListSessions(Payload):
    cursor: Cursor | None = None
    limit: PageLimit = 20
    status: SessionStatus | None = None


class CloseSession(Payload):
    session_id: Identifier
    reason: Annotated[str, msgspec.Meta(max_length=256)] = "closed by user"


class UpdateSession(Payload):
    """Merge `metadata` into the session's (a key set to "" is removed)."""

    session_id: Identifier
    metadata: Metadata


class GetSessionEvents(Payload):
    session_id: Identifier
    after_seq: Sequence = 0
    limit: PageLimit = 100


class SendChat(Payload):
    session_id: Identifier
    content: Content


class GetTask(Payload):
    task_id: Identifier


class CancelTask(Payload):
    task_id: Identifier


class RespondTask(Payload):
    """The user's answer to the question of a task waiting in `input_required`."""

    task_id: Identifier
    content: Content


class ListAgents(Payload):
    """The agents the caller may start a session with, by agent id, after `cursor`."""

    cursor: Identifier | None = None
    limit: PageLimit = 100


class SessionView(msgspec.Struct, kw_only=True):
    """A session as callers see it."""

    session_id: str
    tenant_id: str
    user_id: str
    agent_id: str
    status: SessionStatus
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    expires_at: datetime
    idle_expires_at: datetime
    closed_at: datetime | None = None
    close_reason: str | None = None
    metadata: dict[str, str] = {}


class SessionPage(msgspec.Struct, kw_only=True):
    items: list[SessionView]
    next_cursor: str | None = None


class AgentView(msgspec.Struct, kw_only=True):
    """An agent as callers see it: what to pick it by, never its model settings."""

    agent_id: str
    name: str
    access: Access
    on_busy: BusyPolicy


class AgentPage(msgspec.Struct, kw_only=True):
    """Agents in id order; `next_cursor` (the last id) asks for the next page, if any."""

    items: list[AgentView]
    next_cursor: str | None = None


class ChatAccepted(msgspec.Struct, kw_only=True):
    """Sent only after the user message and its task are durably stored."""

    task_id: str
    session_id: str
    status: TaskStatus
    seq: int


class TaskView(msgspec.Struct, kw_only=True, omit_defaults=True):
    task_id: str
    session_id: str
    agent_id: str
    status: TaskStatus
    created_at: datetime
    updated_at: datetime
    attempts: int = 0
    answer: str | None = None
    error: ErrorBody | None = None
    input: InputRequest | None = None


class EventRecord(msgspec.Struct, kw_only=True):
    """A stored session event with its sequence number."""

    seq: int
    event: SessionEvent


class EventPage(msgspec.Struct, kw_only=True):
    """Events after `after_seq`; `recovered` is false when some of them aged out of retention."""

    events: list[EventRecord]
    recovered: bool
    last_seq: int
    more: bool


class ActionKind(StrEnum):
    COMMAND = "command"
    QUERY = "query"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """What one action type takes, returns, and needs."""

    action_type: str
    payload: type[Payload]
    reply: Any
    kind: ActionKind
    permission: str
    summary: str

    @property
    def endpoint_name(self) -> str:
        """Micro endpoint names allow no dots: `session.start` -> `session-start`."""
        return self.action_type.replace(".", "-")


ACTIONS: dict[str, ActionSpec] = {
    spec.action_type: spec
    for spec in (
        ActionSpec("session.start", StartSession, SessionView, ActionKind.COMMAND,
                   "sessions:write", "Start a chat session with an agent"),
        ActionSpec("session.get", GetSession, SessionView, ActionKind.QUERY,
                   "sessions:read", "Read one of the caller's sessions"),
        ActionSpec("session.list", ListSessions, SessionPage, ActionKind.QUERY,
                   "sessions:read", "List the caller's sessions, a page at a time"),
        ActionSpec("session.update", UpdateSession, SessionView, ActionKind.COMMAND,
                   "sessions:write", "Merge metadata into an open session"),
        ActionSpec("session.close", CloseSession, SessionView, ActionKind.COMMAND,
                   "sessions:write", "Close a session"),
        ActionSpec("session.events", GetSessionEvents, EventPage, ActionKind.QUERY,
                   "sessions:read", "Read a session's events after a sequence number"),
        ActionSpec("chat.send", SendChat, ChatAccepted, ActionKind.COMMAND,
                   "chat:send", "Send a user message; replies once it is durably stored"),
        ActionSpec("task.get", GetTask, TaskView, ActionKind.QUERY,
                   "tasks:read", "Read a chat task's status and answer"),
        ActionSpec("task.cancel", CancelTask, TaskView, ActionKind.COMMAND,
                   "tasks:write", "Cancel a queued, running or waiting chat task"),
        ActionSpec("task.respond", RespondTask, TaskView, ActionKind.COMMAND,
                   "tasks:write", "Answer a task waiting for input; it runs again with it"),
        ActionSpec("agent.list", ListAgents, AgentPage, ActionKind.QUERY,
                   "sessions:read", "List the agents the caller may start a session with"),
    )
}  # fmt: skip

DEFAULT_PERMISSIONS: tuple[str, ...] = tuple(sorted({s.permission for s in ACTIONS.values()}))


def task_view(task: ChatTask) -> TaskView:
    """The caller-facing view of a stored task."""
    return TaskView(
        task_id=task.task_id,
        session_id=task.session_id,
        agent_id=task.agent_id,
        status=task.status,
        created_at=task.created_at,
        updated_at=task.updated_at,
        attempts=task.attempts,
        answer=task.answer,
        error=task.error,
        input=task.input,
    )


def session_view(session: Session, idle_expires_at: datetime) -> SessionView:
    """The caller-facing view of a stored session."""
    return SessionView(
        session_id=session.session_id,
        tenant_id=session.tenant_id,
        user_id=session.user_id,
        agent_id=session.agent_id,
        status=session.status,
        created_at=session.created_at,
        updated_at=session.updated_at,
        last_activity_at=session.last_activity_at,
        expires_at=session.expires_at,
        idle_expires_at=idle_expires_at,
        closed_at=session.closed_at,
        close_reason=session.close_reason,
        metadata=dict(session.metadata),
    )
