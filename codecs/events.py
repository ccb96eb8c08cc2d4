"""Session events: everything that happens in a session, appended to the event stream."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from orchestrator.codecs.errors import ErrorBody
from orchestrator.codecs.execution_messages import InputRequest
from orchestrator.codecs.records import TaskStatus


class Event(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Base of every session event; `type` is the tag."""

    session_id: str
    at: datetime


class SessionStarted(Event, tag="session.started"):
    agent_id: str


class MessageAccepted(Event, tag="message.accepted"):
    """The user's message, durably stored; its task starts `queued`."""

    task_id: str
    message_id: str
    content: str


class TaskStatusChanged(Event, tag="task.status"):
    """A task changed state. `running` with a higher `attempt` than text already seen for the
    task means a new attempt started: clients discard that task's text of earlier attempts.
    `input` is set exactly when the status is `input_required`."""

    task_id: str
    status: TaskStatus
    attempt: int = 0
    error: ErrorBody | None = None
    input: InputRequest | None = None


class ChatChunk(Event, tag="chat.chunk"):
    """Streamed text of an answer: `index` is the index of its first part within (task,
    attempt), from 0; one event holds the text of one or more consecutive parts. `attempt` is
    always set (attempts count from 1; 0 only on events stored before attempts existed)."""

    task_id: str
    index: int
    content: str
    attempt: int = 0


class ToolCall(Event, tag="tool.call"):
    """The agent called a tool during an attempt."""

    task_id: str
    attempt: int
    index: int
    call_id: str
    name: str
    arguments: dict[str, Any] = {}


class ToolResult(Event, tag="tool.result"):
    """A tool's result during an attempt, answering the call with the same `call_id`."""

    task_id: str
    attempt: int
    index: int
    call_id: str
    content: str


class ChatResponse(Event, tag="chat.response"):
    """The final answer of a task: the concatenated text of its final attempt's chunks.
    `partial` marks an answer cut short (cancelled or interrupted)."""

    task_id: str
    content: str
    attempt: int = 0
    partial: bool = False


class SessionClosed(Event, tag="session.closed"):
    reason: str


SessionEvent = (
    SessionStarted
    | MessageAccepted
    | TaskStatusChanged
    | ChatChunk
    | ToolCall
    | ToolResult
    | ChatResponse
    | SessionClosed
)
