"""Pieces of the AsyncAPI document: channel parameters, header blocks, message ids, and the
builder that turns the msgspec types the document names into `components.schemas`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

from orchestrator.codecs import frames
from orchestrator.codecs.actions import TaskView
from orchestrator.codecs.errors import ErrorEnvelope
from orchestrator.codecs.events import SessionEvent
from orchestrator.codecs.transport import (
    CONTENT_TYPE_HEADER,
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    LAST_SEQUENCE_HEADER,
    SEQUENCE_HEADER,
    STREAM_HEADER,
    SUBJECT_HEADER,
)

_ATTEMPT_SENTINEL = 918273645  # an attempt number no real address contains

PARAMETERS = {
    "session_id": "The session's id.",
    "task_id": "The chat task's id.",
    "tenant_id": "The tenant's id.",
    "user_id": "The user's id.",
    "attempt": "The attempt number, from 1.",
    "nonce": "A random token only the execution request names.",
}

# What `data` holds in each server frame that is not a session event (those carry the event).
SERVER_FRAME_DATA: dict[frames.WebSocketMessageType, Any] = {
    frames.WebSocketMessageType.ACK: frames.AckData,
    frames.WebSocketMessageType.TASK: TaskView,
    frames.WebSocketMessageType.PONG: None,
    frames.WebSocketMessageType.ERROR: ErrorEnvelope,
    frames.WebSocketMessageType.AUTH_REFRESHED: frames.AuthRefreshedData,
    frames.WebSocketMessageType.SESSION_READY: frames.SessionReadyData,
    frames.WebSocketMessageType.AUTH_EXPIRING: frames.AuthExpiringData,
}

ERROR_HEADERS = {
    "type": "object",
    "properties": {
        ERROR_HEADER: {"type": "string", "description": "The error's message."},
        ERROR_CODE_HEADER: {
            "type": "string",
            "description": "The HTTP status of the error code (codecs.errors.TRANSPORT).",
        },
    },
}
CONTENT_TYPE_HEADERS = {
    "type": "object",
    "properties": {
        CONTENT_TYPE_HEADER: {
            "type": "string",
            "enum": ["application/json", "application/msgpack"],
            "description": "MessagePack when set to application/msgpack; JSON otherwise.",
        }
    },
}
REPUBLISH_HEADERS = {
    "type": "object",
    "description": "Added by the JetStream republish of SESSION_EVENTS.",
    "properties": {
        STREAM_HEADER: {"type": "string"},
        SUBJECT_HEADER: {"type": "string"},
        SEQUENCE_HEADER: {"type": "string", "description": "The event's stream sequence."},
        LAST_SEQUENCE_HEADER: {"type": "string"},
    },
}


def address(build: Callable[..., str], *names: str) -> str:
    """A subject from `subjects/` with `{name}` placeholders where its tokens go."""
    tokens = [_ATTEMPT_SENTINEL if n == "attempt" else f"zzparam{i}zz" for i, n in enumerate(names)]
    subject = build(*tokens)
    for name, token in zip(names, tokens, strict=True):
        subject = subject.replace(str(token), "{" + name + "}")
    return subject


def tag_of(tp: Any) -> str:
    return str(tp.__struct_config__.tag)


def message_id(tag: str) -> str:
    return tag.replace(".", "_")


class SchemaBuilder:
    """Collects the types the document names and builds their schemas in one pass."""

    def __init__(self) -> None:
        self.types: list[Any] = []

    def schema(self, tp: Any) -> int:
        self.types.append(tp)
        return len(self.types) - 1

    def resolve(self, node: Any, schemas: tuple[dict[str, Any], ...]) -> Any:
        """Replace each `("schema", i)` marker left in `node` with the i-th generated schema."""
        if isinstance(node, tuple) and node and node[0] == "schema":
            return schemas[node[1]]
        if isinstance(node, dict):
            return {key: self.resolve(value, schemas) for key, value in node.items()}
        if isinstance(node, list):
            return [self.resolve(item, schemas) for item in node]
        return node


def asyncapi_schema(node: Any) -> Any:
    """msgspec's JSON Schema in AsyncAPI's Schema Object form: `discriminator` is a property
    name there, not OpenAPI's `{propertyName, mapping}` object."""
    if isinstance(node, dict):
        out = {key: asyncapi_schema(value) for key, value in node.items()}
        if isinstance(out.get("discriminator"), dict):
            out["discriminator"] = out["discriminator"]["propertyName"]
        return out
    if isinstance(node, list):
        return [asyncapi_schema(item) for item in node]
    return node


def server_frames(b: SchemaBuilder) -> dict[str, Any]:
    """One message per server frame type: `{type, id?, seq?, data}` with its data's schema."""
    out: dict[str, Any] = {}
    event_types = {tag_of(tp): tp for tp in get_args(SessionEvent)}
    for frame_type in frames.WebSocketMessageType:
        if frame_type.value in event_types:
            data: Any = ("schema", b.schema(event_types[frame_type.value]))
        elif frame_type in SERVER_FRAME_DATA:
            tp = SERVER_FRAME_DATA[frame_type]
            data = {"type": "object"} if tp is None else ("schema", b.schema(tp))
        else:
            continue  # a client frame
        props: dict[str, Any] = {
            "type": {"const": frame_type.value},
            "id": {"type": "string", "description": "The id of the client frame it answers."},
            "data": data,
        }
        if frame_type.value in event_types:
            props["seq"] = {"type": "integer", "description": "The event's stream sequence."}
        out[f"server_{message_id(frame_type.value)}"] = {
            "name": frame_type.value,
            "title": f"{frame_type.value} (server)",
            "payload": {"type": "object", "properties": props, "required": ["type"]},
        }
    return out
