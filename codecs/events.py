"""Session events: everything that happens in a session, appended to the event stream."""

from __future__ import annotations

from datetime import datetime

import msgspec

from orchestrator.codecs.errors import ErrorBody
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
    task_id: str
    status: TaskStatus
    attempt: int = 0
    error: ErrorBody | None = None


class ChatChunk(Event, tag="chat.chunk"):
    """A streamed part of an answer; `index` counts from 0 within the task."""

    task_id: str
    index: int
    content: str


class ChatResponse(Event, tag="chat.response"):
    """The final answer of a task."""

    task_id: str
    content: str


class SessionClosed(Event, tag="session.closed"):
    reason: str


SessionEvent = (
    SessionStarted | MessageAccepted | TaskStatusChanged | ChatChunk | ChatResponse | SessionClosed
)
