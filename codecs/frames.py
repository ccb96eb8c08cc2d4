"""What the edge speaks besides DomainActions: WebSocket frames and the chat-start HTTP reply.

Every WebSocket frame is a JSON text frame `{"type": ..., "id": ..., "data": {...}}`; server
frames about the session's event stream also carry `seq`, the event's stream sequence, which a
client sends back as `after_seq` to resume without gap or duplicate.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from orchestrator.codecs.actions import EventRecord, SessionView
from orchestrator.codecs.errors import OrchestratorError
from orchestrator.codecs.types import Content, Identifier

FrameId = Annotated[str, msgspec.Meta(max_length=64)]


class WebSocketMessageType(StrEnum):
    """Every frame type; a public contract, names never change."""

    # client -> server
    CHAT_MESSAGE = "chat.message"
    TASK_CANCEL = "task.cancel"
    TASK_RESPOND = "task.respond"
    PING = "ping"
    AUTH_REFRESH = "auth.refresh"
    # server -> client: replies to a client frame (echo its `id`)
    ACK = "ack"
    TASK = "task"
    PONG = "pong"
    ERROR = "error"
    AUTH_REFRESHED = "auth.refreshed"
    # server -> client: connection state
    SESSION_READY = "session.ready"
    AUTH_EXPIRING = "auth.expiring"
    # server -> client: session events (with `seq`), named like the event's `type`
    SESSION_STARTED = "session.started"
    MESSAGE_ACCEPTED = "message.accepted"
    TASK_STATUS = "task.status"
    CHAT_CHUNK = "chat.chunk"
    TOOL_CALL = "tool.call"
    TOOL_RESULT = "tool.result"
    CHAT_RESPONSE = "chat.response"
    SESSION_CLOSED = "session.closed"


class ChatMessageData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A user message: the `chat.message` frame's data and the HTTP messages body."""

    content: Content


class TaskCancelData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Stop a turn of this socket's session (queued, running or waiting for input)."""

    task_id: Identifier


class TaskRespondData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Answer a turn waiting in `input_required`: the `task.respond` frame and the HTTP body."""

    task_id: Identifier
    content: Content


class RespondBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """`POST /api/tasks/{task_id}/respond`: the answer."""

    content: Content


class AuthRefreshData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=16384)]


class ClientFrame(
    msgspec.Struct, tag_field="type", kw_only=True, forbid_unknown_fields=True, frozen=True
):
    """Base of the frames a client sends; `id` is echoed on the reply."""

    id: FrameId | None = None


class ChatMessageFrame(ClientFrame, tag=WebSocketMessageType.CHAT_MESSAGE.value):
    data: ChatMessageData


class TaskCancelFrame(ClientFrame, tag=WebSocketMessageType.TASK_CANCEL.value):
    data: TaskCancelData


class TaskRespondFrame(ClientFrame, tag=WebSocketMessageType.TASK_RESPOND.value):
    data: TaskRespondData


class PingFrame(ClientFrame, tag=WebSocketMessageType.PING.value):
    data: dict[str, Any] = {}


class AuthRefreshFrame(ClientFrame, tag=WebSocketMessageType.AUTH_REFRESH.value):
    data: AuthRefreshData


ClientMessage = ChatMessageFrame | TaskCancelFrame | TaskRespondFrame | PingFrame | AuthRefreshFrame


class ServerFrame(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A frame the edge sends; `data` is one of the data Structs below, an event, or an envelope."""

    type: WebSocketMessageType
    data: Any = {}
    id: str | None = None
    seq: int | None = None


def event_frame(record: EventRecord) -> ServerFrame:
    """A stored session event as the frame of the same name, carrying its `seq`."""
    tag = type(record.event).__struct_config__.tag
    return ServerFrame(type=WebSocketMessageType(tag), seq=record.seq, data=record.event)


def error_frame(error: OrchestratorError, frame_id: str | None = None) -> ServerFrame:
    """An `error` frame with the error envelope, answering the client frame `frame_id`."""
    return ServerFrame(type=WebSocketMessageType.ERROR, id=frame_id, data=error.envelope())


class AckData(msgspec.Struct, kw_only=True):
    """The message and its task are durably stored; `seq` is its `message.accepted` event's."""

    task_id: str
    seq: int


class SessionReadyData(msgspec.Struct, kw_only=True):
    """History after `after_seq` up to `last_seq` follows; `recovered` false means some aged out."""

    session_id: str
    after_seq: int
    last_seq: int
    recovered: bool
    replayed: int


class AuthExpiringData(msgspec.Struct, kw_only=True):
    """Send `auth.refresh` with a new token before `expires_at`, or the socket closes with 4401."""

    expires_at: datetime
    seconds_left: float


class AuthRefreshedData(msgspec.Struct, kw_only=True):
    expires_at: datetime


class ChatStartReply(msgspec.Struct, kw_only=True):
    """`POST /api/chat/start`: the new session and where to open its WebSocket (add `?token=`)."""

    session_id: str
    expires_at: datetime
    ws_url: str
    session: SessionView


class DevToken(msgspec.Struct, kw_only=True):
    """`GET /api/dev/token` (dev only): a token for the page."""

    token: str
    tenant_id: str
    user_id: str
    expires_at: datetime
