"""JSON Schema of every action, reply, event and message, generated from the Structs.

`python -m orchestrator.codecs.schema docs/schemas` writes one file per message; a test checks
that the committed files equal what the codecs generate, so the docs cannot drift.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

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
from orchestrator.codecs.records import ChatTask, Session
from orchestrator.codecs.session_history import SessionHistory
from orchestrator.codecs.webhooks import WebhookPayload


def catalogue() -> dict[str, Any]:
    """File name (without .json) -> the type it documents."""
    types: dict[str, Any] = {}
    for spec in ACTIONS.values():
        types[f"action.{spec.action_type}"] = DomainAction[spec.payload]
        types[f"reply.{spec.action_type}"] = spec.reply
    types.update(
        {
            "error": ErrorEnvelope,
            "event": SessionEvent,
            "record.session": Session,
            "record.task": ChatTask,
            "record.history": SessionHistory,
            "agent_config": AgentConfig,
            "management.agent_lookup": AgentLookup,
            "execution.request": ExecutionRequest,
            "execution.result": ExecutionResult,
            "execution.cancel": ExecutionCancel,
            "execution.stream_message": StreamMessage,
            "ws.client_frame": frames.ClientMessage,
            "ws.server_frame": frames.ServerFrame,
            "webhook.payload": WebhookPayload,
        }
    )
    return types


def normalise(node: Any) -> Any:
    """Every `description` (a docstring) in `inspect.cleandoc` form, at any depth.

    msgspec's own docstring handling changed between releases (0.23 dedents, older ones did not);
    doing it here keeps the committed schemas independent of the installed msgspec.
    """
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else normalise(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [normalise(item) for item in node]
    return node


def render(tp: Any) -> str:
    """The schema of one type as committed: normalised, sorted keys, two-space indent."""
    return json.dumps(normalise(msgspec.json.schema(tp)), indent=2, sort_keys=True) + "\n"


def generate() -> dict[str, str]:
    """File name -> schema text."""
    return {f"{name}.json": render(tp) for name, tp in catalogue().items()}


def write(folder: Path) -> list[Path]:
    """Write every schema into `folder`; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")
    for path in write(target):
        print(path)
