"""The channels and operations of the AsyncAPI document, one per subject in `subjects/` (and the
edge's WebSocket), each naming the msgspec type of every message it carries."""

from __future__ import annotations

from typing import Any, get_args

from orchestrator.codecs import frames
from orchestrator.codecs.actions import ACTIONS
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
from orchestrator.codecs.webhooks import WebhookJob
from orchestrator.service.contracts.asyncapi_parts import (
    CONTENT_TYPE_HEADERS,
    ERROR_HEADERS,
    PARAMETERS,
    REPUBLISH_HEADERS,
    SchemaBuilder,
    address,
    message_id,
    server_frames,
    tag_of,
)
from orchestrator.subjects.names import Subjects
from orchestrator.subjects.permissions import EXECUTION_QUEUE


class ChannelTable:
    """The document's `channels` and `operations`, filled in order; payloads are schema markers
    of `builder`, resolved once every type is known."""

    def __init__(self) -> None:
        self.builder = SchemaBuilder()
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.error = {
            "name": "error",
            "title": "Error reply",
            "summary": "The error envelope, with micro's error headers.",
            "headers": ERROR_HEADERS,
            "payload": ("schema", self.schema(ErrorEnvelope)),
        }

    def schema(self, tp: Any) -> int:
        """Name `tp` in the document; its schema is generated with all the others."""
        return self.builder.schema(tp)

    def channel(
        self,
        key: str,
        addr: str | None,
        messages: dict[str, Any],
        description: str,
        servers: str = "nats",
    ) -> None:
        """Add a channel; its parameters are the `{name}` placeholders its address holds."""
        params = {
            name: {"description": text}
            for name, text in PARAMETERS.items()
            if addr is not None and "{" + name + "}" in addr
        }
        self.channels[key] = {
            "address": addr,
            "description": description,
            "messages": messages,
            "servers": [{"$ref": f"#/servers/{servers}"}],
        }
        if params:
            self.channels[key]["parameters"] = params

    def operation(self, key: str, action: str, chan: str, summary: str, **extra: Any) -> None:
        """Add an operation over every message of channel `chan`."""
        self.operations[key] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{chan}"},
            "summary": summary,
            "messages": self._refs(chan),
            **extra,
        }

    def reply(self, chan: str) -> dict[str, Any]:
        """An operation's `reply`: every message of channel `chan`."""
        return {"channel": {"$ref": f"#/channels/{chan}"}, "messages": self._refs(chan)}

    def _refs(self, chan: str) -> list[dict[str, str]]:
        return [
            {"$ref": f"#/channels/{chan}/messages/{m}"} for m in self.channels[chan]["messages"]
        ]


def nats_channels(t: ChannelTable, subjects: Subjects) -> None:
    """Every NATS channel: actions, session events, work queues, execution, control, webhooks."""
    for spec in ACTIONS.values():
        key = f"action.{spec.action_type}"
        t.channel(
            key,
            subjects.action(spec.action_type),
            {
                "request": {
                    "name": spec.action_type,
                    "title": f"{spec.action_type} request",
                    "summary": spec.summary,
                    "headers": CONTENT_TYPE_HEADERS,
                    "payload": ("schema", t.schema(DomainAction[spec.payload])),
                }
            },
            f"DomainAction `{spec.action_type}` ({spec.kind.value}, permission "
            f"`{spec.permission}`), an endpoint of the NATS micro service `orchestrator`.",
        )
        t.channel(
            f"{key}.reply",
            None,
            {
                "reply": {
                    "name": f"{spec.action_type}.reply",
                    "title": f"{spec.action_type} reply",
                    "headers": CONTENT_TYPE_HEADERS,
                    "payload": ("schema", t.schema(spec.reply)),
                },
                "error": t.error,
            },
            f"The reply to `{spec.action_type}`, on the request's inbox.",
        )
        t.operation(
            spec.action_type,
            "receive",
            key,
            spec.summary,
            reply=t.reply(f"{key}.reply"),
            bindings={"nats": {"queue": "q"}},
        )

    events = {
        message_id(tag_of(tp)): {
            "name": tag_of(tp),
            "title": tag_of(tp),
            "payload": ("schema", t.schema(tp)),
        }
        for tp in get_args(SessionEvent)
    }
    t.channel(
        "session.events",
        address(subjects.session_events, "session_id"),
        events,
        "A session's events, stored in the stream SESSION_EVENTS (replay them with "
        "`session.events`).",
    )
    t.operation("session.events.store", "send", "session.events", "Store a session event")
    live = {key: {**message, "headers": REPUBLISH_HEADERS} for key, message in events.items()}
    t.channel(
        "session.live",
        address(subjects.live, "session_id"),
        live,
        "The same events republished live by JetStream, with their sequence in `Nats-Sequence`.",
    )
    t.operation("session.live.publish", "send", "session.live", "A stored event, live")

    t.channel(
        "work.chat",
        address(subjects.work, "tenant_id", "user_id"),
        {"work_item": {"name": "work_item", "payload": ("schema", t.schema(WorkItem))}},
        "The head turn of each session on the work-queue stream CHAT_WORK.",
    )
    t.operation("work.chat.enqueue", "send", "work.chat", "Queue a session's head turn")
    t.operation("work.chat.consume", "receive", "work.chat", "Run a queued turn")

    t.channel(
        "execution.run",
        subjects.execution_run,
        {
            "request": {
                "name": "execution.request",
                "payload": ("schema", t.schema(ExecutionRequest)),
            }
        },
        "Run one attempt of one chat task (execution contract v2, docs/execution.md).",
    )
    t.channel(
        "execution.run.reply",
        None,
        {
            "result": {
                "name": "execution.result",
                "payload": ("schema", t.schema(ExecutionResult)),
            },
            "error": t.error,
        },
        "The end of the attempt, on the request's inbox.",
    )
    t.operation(
        "execution.run",
        "send",
        "execution.run",
        "Request an attempt from an execution service",
        reply=t.reply("execution.run.reply"),
        bindings={"nats": {"queue": EXECUTION_QUEUE}},
    )
    t.channel(
        "execution.cancel",
        subjects.execution_cancel,
        {"cancel": {"name": "execution.cancel", "payload": ("schema", t.schema(ExecutionCancel))}},
        "Stop work on a task (every attempt, or one).",
    )
    t.operation("execution.cancel", "send", "execution.cancel", "Tell execution services to stop")
    t.channel(
        "execution.stream",
        address(subjects.execution_stream, "task_id", "attempt", "nonce"),
        {
            message_id(tag_of(tp)): {
                "name": tag_of(tp),
                "title": tag_of(tp),
                "payload": ("schema", t.schema(tp)),
            }
            for tp in get_args(StreamMessage)
        },
        "One attempt's parts and heartbeats, from the execution service (core NATS).",
    )
    t.operation("execution.stream", "receive", "execution.stream", "Receive an attempt's parts")

    t.channel(
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
    t.operation("control.task.cancel.send", "send", "control.task.cancel", "Fan a cancel out")
    t.operation("control.task.cancel.receive", "receive", "control.task.cancel", "Stop a task")

    t.channel(
        "management.agent.get",
        subjects.management_agent_get,
        {"lookup": {"name": "agent.lookup", "payload": ("schema", t.schema(AgentLookup))}},
        "Fallback lookup of an agent the `agent_configs` bucket lacks.",
    )
    t.channel(
        "management.agent.get.reply",
        None,
        {
            "agent": {"name": "agent_config", "payload": ("schema", t.schema(AgentConfig))},
            "error": t.error,
        },
        "The agent's config, or an error when there is none.",
    )
    t.operation(
        "management.agent.get",
        "send",
        "management.agent.get",
        "Ask the management service for an agent",
        reply=t.reply("management.agent.get.reply"),
    )

    t.channel(
        "webhooks",
        address(subjects.webhook, "tenant_id"),
        {"job": {"name": "webhook.job", "payload": ("schema", t.schema(WebhookJob))}},
        "Webhook deliveries waiting in the work-queue stream WEBHOOKS (docs/webhooks.md).",
    )
    t.operation("webhooks.enqueue", "send", "webhooks", "Queue a webhook delivery")
    t.operation("webhooks.deliver", "receive", "webhooks", "Deliver a queued webhook")


def websocket_channel(t: ChannelTable) -> None:
    """The edge's WebSocket: the frames a client sends and the ones the edge sends."""
    client_frames = {
        message_id(tag_of(tp)): {
            "name": tag_of(tp),
            "title": tag_of(tp),
            "payload": ("schema", t.schema(tp)),
        }
        for tp in get_args(frames.ClientMessage)
    }
    t.channel(
        "ws.chat",
        "/ws/chat/{session_id}",
        {**client_frames, **server_frames(t.builder)},
        "The edge's WebSocket for one session (docs/edge.md): JSON text frames. Open it with "
        "`?token=<jwt>` and optionally `&after_seq=<n>` to resume.",
        servers="edge",
    )
    t.channels["ws.chat"]["bindings"] = {
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
    server_keys = [k for k in t.channels["ws.chat"]["messages"] if k not in client_frames]
    t.operations["ws.chat.receive"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/ws.chat"},
        "summary": "Frames a client sends",
        "messages": [{"$ref": f"#/channels/ws.chat/messages/{k}"} for k in client_frames],
    }
    t.operations["ws.chat.send"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/ws.chat"},
        "summary": "Frames the edge sends",
        "messages": [{"$ref": f"#/channels/ws.chat/messages/{k}"} for k in server_keys],
    }
