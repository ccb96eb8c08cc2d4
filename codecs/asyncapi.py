"""AsyncAPI 3.0 document of every channel, generated from the codecs and the subject names.

`python -m orchestrator.codecs.asyncapi docs/asyncapi.json` writes it; a test checks that the
committed file equals what this module generates and that it validates against the official
AsyncAPI 3.0 JSON Schema. It describes the deployment as one application (orchestrator instances
and edges): the DomainActions it serves with their replies, the session events it stores and
republishes live, the execution requests, cancels and stream parts it exchanges with execution
services, the cancel fan-out between instances, its work queues and the edge's WebSocket frames.
Every payload is the msgspec JSON Schema of the Struct that decodes it (`components.schemas`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import msgspec

from orchestrator.codecs import frames
from orchestrator.codecs.actions import ACTIONS, TaskView
from orchestrator.codecs.agent_configs import AgentConfig, AgentLookup
from orchestrator.codecs.envelope import DomainAction
from orchestrator.codecs.errors import ErrorEnvelope
from orchestrator.codecs.events import SessionEvent
from orchestrator.codecs.execution_messages import (
    ExecutionCancel,
    ExecutionRequest,
    ExecutionResult,
    StreamMessage,
)
from orchestrator.codecs.records import WorkItem
from orchestrator.codecs.schema import normalise
from orchestrator.codecs.webhooks import WebhookJob
from orchestrator.subjects.names import Subjects
from orchestrator.subjects.permissions import EXECUTION_QUEUE

VERSION = "0.1.0"
PREFIX = "nooble4"
_REF = "#/components/schemas/{name}"
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

_ERROR_HEADERS = {
    "type": "object",
    "properties": {
        "Nats-Service-Error": {"type": "string", "description": "The error's message."},
        "Nats-Service-Error-Code": {
            "type": "string",
            "description": "The HTTP status of the error code (codecs.errors.TRANSPORT).",
        },
    },
}
_CONTENT_TYPE_HEADERS = {
    "type": "object",
    "properties": {
        "Content-Type": {
            "type": "string",
            "enum": ["application/json", "application/msgpack"],
            "description": "MessagePack when set to application/msgpack; JSON otherwise.",
        }
    },
}
_REPUBLISH_HEADERS = {
    "type": "object",
    "description": "Added by the JetStream republish of SESSION_EVENTS.",
    "properties": {
        "Nats-Stream": {"type": "string"},
        "Nats-Subject": {"type": "string"},
        "Nats-Sequence": {"type": "string", "description": "The event's stream sequence."},
        "Nats-Last-Sequence": {"type": "string"},
    },
}


def address(build: Callable[..., str], *names: str) -> str:
    """A subject from `subjects/` with `{name}` placeholders where its tokens go."""
    tokens = [_ATTEMPT_SENTINEL if n == "attempt" else f"zzparam{i}zz" for i, n in enumerate(names)]
    subject = build(*tokens)
    for name, token in zip(names, tokens, strict=True):
        subject = subject.replace(str(token), "{" + name + "}")
    return subject


def _tag_of(tp: Any) -> str:
    return str(tp.__struct_config__.tag)


def _message_id(tag: str) -> str:
    return tag.replace(".", "_")


class _Builder:
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


def _asyncapi_schema(node: Any) -> Any:
    """msgspec's JSON Schema in AsyncAPI's Schema Object form: `discriminator` is a property
    name there, not OpenAPI's `{propertyName, mapping}` object."""
    if isinstance(node, dict):
        out = {key: _asyncapi_schema(value) for key, value in node.items()}
        if isinstance(out.get("discriminator"), dict):
            out["discriminator"] = out["discriminator"]["propertyName"]
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


def document() -> dict[str, Any]:
    """The whole AsyncAPI 3.0 document as a dict."""
    subjects = Subjects(PREFIX)
    b = _Builder()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    error = {
        "name": "error",
        "title": "Error reply",
        "summary": "The error envelope, with micro's error headers.",
        "headers": _ERROR_HEADERS,
        "payload": ("schema", b.schema(ErrorEnvelope)),
    }

    def channel(
        key: str,
        addr: str | None,
        messages: dict[str, Any],
        description: str,
        servers: str = "nats",
    ) -> None:
        params = {
            name: {"description": text}
            for name, text in PARAMETERS.items()
            if addr is not None and "{" + name + "}" in addr
        }
        channels[key] = {
            "address": addr,
            "description": description,
            "messages": messages,
            "servers": [{"$ref": f"#/servers/{servers}"}],
        }
        if params:
            channels[key]["parameters"] = params

    def operation(key: str, action: str, chan: str, summary: str, **extra: Any) -> None:
        refs = [{"$ref": f"#/channels/{chan}/messages/{m}"} for m in channels[chan]["messages"]]
        operations[key] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{chan}"},
            "summary": summary,
            "messages": refs,
            **extra,
        }

    def reply(chan: str) -> dict[str, Any]:
        refs = [{"$ref": f"#/channels/{chan}/messages/{m}"} for m in channels[chan]["messages"]]
        return {"channel": {"$ref": f"#/channels/{chan}"}, "messages": refs}

    for spec in ACTIONS.values():
        key = f"action.{spec.action_type}"
        channel(
            key,
            subjects.action(spec.action_type),
            {
                "request": {
                    "name": spec.action_type,
                    "title": f"{spec.action_type} request",
                    "summary": spec.summary,
                    "headers": _CONTENT_TYPE_HEADERS,
                    "payload": ("schema", b.schema(DomainAction[spec.payload])),
                }
            },
            f"DomainAction `{spec.action_type}` ({spec.kind.value}, permission "
            f"`{spec.permission}`), an endpoint of the NATS micro service `orchestrator`.",
        )
        channel(
            f"{key}.reply",
            None,
            {
                "reply": {
                    "name": f"{spec.action_type}.reply",
                    "title": f"{spec.action_type} reply",
                    "headers": _CONTENT_TYPE_HEADERS,
                    "payload": ("schema", b.schema(spec.reply)),
                },
                "error": error,
            },
            f"The reply to `{spec.action_type}`, on the request's inbox.",
        )
        operation(
            spec.action_type,
            "receive",
            key,
            spec.summary,
            reply=reply(f"{key}.reply"),
            bindings={"nats": {"queue": "q"}},
        )

    events = {
        _message_id(_tag_of(tp)): {
            "name": _tag_of(tp),
            "title": _tag_of(tp),
            "payload": ("schema", b.schema(tp)),
        }
        for tp in get_args(SessionEvent)
    }
    channel(
        "session.events",
        address(subjects.session_events, "session_id"),
        events,
        "A session's events, stored in the stream SESSION_EVENTS (replay them with "
        "`session.events`).",
    )
    operation("session.events.store", "send", "session.events", "Store a session event")
    live = {key: {**message, "headers": _REPUBLISH_HEADERS} for key, message in events.items()}
    channel(
        "session.live",
        address(subjects.live, "session_id"),
        live,
        "The same events republished live by JetStream, with their sequence in `Nats-Sequence`.",
    )
    operation("session.live.publish", "send", "session.live", "A stored event, live")

    channel(
        "work.chat",
        address(subjects.work, "tenant_id", "user_id"),
        {"work_item": {"name": "work_item", "payload": ("schema", b.schema(WorkItem))}},
        "The head turn of each session on the work-queue stream CHAT_WORK.",
    )
    operation("work.chat.enqueue", "send", "work.chat", "Queue a session's head turn")
    operation("work.chat.consume", "receive", "work.chat", "Run a queued turn")

    channel(
        "execution.run",
        subjects.execution_run,
        {
            "request": {
                "name": "execution.request",
                "payload": ("schema", b.schema(ExecutionRequest)),
            }
        },
        "Run one attempt of one chat task (execution contract v2, docs/execution.md).",
    )
    channel(
        "execution.run.reply",
        None,
        {
            "result": {
                "name": "execution.result",
                "payload": ("schema", b.schema(ExecutionResult)),
            },
            "error": error,
        },
        "The end of the attempt, on the request's inbox.",
    )
    operation(
        "execution.run",
        "send",
        "execution.run",
        "Request an attempt from an execution service",
        reply=reply("execution.run.reply"),
        bindings={"nats": {"queue": EXECUTION_QUEUE}},
    )
    channel(
        "execution.cancel",
        subjects.execution_cancel,
        {"cancel": {"name": "execution.cancel", "payload": ("schema", b.schema(ExecutionCancel))}},
        "Stop work on a task (every attempt, or one).",
    )
    operation("execution.cancel", "send", "execution.cancel", "Tell execution services to stop")
    channel(
        "execution.stream",
        address(subjects.execution_stream, "task_id", "attempt", "nonce"),
        {
            _message_id(_tag_of(tp)): {
                "name": _tag_of(tp),
                "title": _tag_of(tp),
                "payload": ("schema", b.schema(tp)),
            }
            for tp in get_args(StreamMessage)
        },
        "One attempt's parts and heartbeats, from the execution service (core NATS).",
    )
    operation("execution.stream", "receive", "execution.stream", "Receive an attempt's parts")

    channel(
        "control.task.cancel",
        address(subjects.control_cancel, "task_id"),
        {
            "cancel": {
                "name": "control.task.cancel",
                "summary": "Empty body: the subject names the task.",
                "payload": {"type": "string", "maxLength": 0},
            }
        },
        "Cancel fan-out between orchestrator instances: the one running the task stops it.",
    )
    operation("control.task.cancel.send", "send", "control.task.cancel", "Fan a cancel out")
    operation("control.task.cancel.receive", "receive", "control.task.cancel", "Stop a task")

    channel(
        "management.agent.get",
        subjects.management_agent_get,
        {"lookup": {"name": "agent.lookup", "payload": ("schema", b.schema(AgentLookup))}},
        "Fallback lookup of an agent the `agent_configs` bucket lacks.",
    )
    channel(
        "management.agent.get.reply",
        None,
        {
            "agent": {"name": "agent_config", "payload": ("schema", b.schema(AgentConfig))},
            "error": error,
        },
        "The agent's config, or an error when there is none.",
    )
    operation(
        "management.agent.get",
        "send",
        "management.agent.get",
        "Ask the management service for an agent",
        reply=reply("management.agent.get.reply"),
    )

    channel(
        "webhooks",
        address(subjects.webhook, "tenant_id"),
        {"job": {"name": "webhook.job", "payload": ("schema", b.schema(WebhookJob))}},
        "Webhook deliveries waiting in the work-queue stream WEBHOOKS (docs/webhooks.md).",
    )
    operation("webhooks.enqueue", "send", "webhooks", "Queue a webhook delivery")
    operation("webhooks.deliver", "receive", "webhooks", "Deliver a queued webhook")

    client_frames = {
        _message_id(_tag_of(tp)): {
            "name": _tag_of(tp),
            "title": _tag_of(tp),
            "payload": ("schema", b.schema(tp)),
        }
        for tp in get_args(frames.ClientMessage)
    }
    channel(
        "ws.chat",
        "/ws/chat/{session_id}",
        {**client_frames, **_server_frames(b)},
        "The edge's WebSocket for one session (docs/edge.md): JSON text frames. Open it with "
        "`?token=<jwt>` and optionally `&after_seq=<n>` to resume.",
        servers="edge",
    )
    channels["ws.chat"]["bindings"] = {
        "ws": {
            "method": "GET",
            "query": {
                "type": "object",
                "properties": {
                    "token": {"type": "string", "description": "The caller's JWT."},
                    "after_seq": {"type": "integer", "minimum": 0},
                },
                "required": ["token"],
            },
        }
    }
    server_keys = [k for k in channels["ws.chat"]["messages"] if k not in client_frames]
    operations["ws.chat.receive"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/ws.chat"},
        "summary": "Frames a client sends",
        "messages": [{"$ref": f"#/channels/ws.chat/messages/{k}"} for k in client_frames],
    }
    operations["ws.chat.send"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/ws.chat"},
        "summary": "Frames the edge sends",
        "messages": [{"$ref": f"#/channels/ws.chat/messages/{k}"} for k in server_keys],
    }

    schemas, components = msgspec.json.schema_components(b.types, ref_template=_REF)
    doc = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Nooble4 Agent Orchestrator",
            "version": VERSION,
            "description": "Every NATS channel of the orchestrator and the edge's WebSocket. "
            f"Subjects are shown under the default prefix `{PREFIX}` (ORCH_SUBJECT_PREFIX).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The deployment's NATS (JetStream enabled).",
            },
            "edge": {
                "host": "localhost:8080",
                "protocol": "ws",
                "description": "An edge (ORCH_EDGE_HOST, ORCH_EDGE_PORT).",
            },
        },
        "channels": b.resolve(channels, tuple(schemas)),
        "operations": operations,
        "components": {"schemas": dict(sorted(components.items()))},
    }
    return _asyncapi_schema(normalise(doc))


def _server_frames(b: _Builder) -> dict[str, Any]:
    """One message per server frame type: `{type, id?, seq?, data}` with its data's schema."""
    out: dict[str, Any] = {}
    event_types = {_tag_of(tp): tp for tp in get_args(SessionEvent)}
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
        out[f"server_{_message_id(frame_type.value)}"] = {
            "name": frame_type.value,
            "title": f"{frame_type.value} (server)",
            "payload": {"type": "object", "properties": props, "required": ["type"]},
        }
    return out


def render() -> str:
    """The document as committed: sorted keys, two-space indent."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/asyncapi.json")
    target.write_text(render())
    print(target)
