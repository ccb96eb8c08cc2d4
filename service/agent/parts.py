"""What an execution handler yields: text, tool calls, tool results, or a question for the user.

These are the author's vocabulary, not wire types: the SDK stamps task id, attempt and index on
each and turns them into the `Part`s of `codecs/execution_messages.py`. A bare `str` is text.

    async def handle(request):
        yield text("Looking that up... ")
        yield tool_call("c1", "search", {"q": request.content})
        yield tool_result("c1", "3 hits")
        if not request.inputs:
            yield ask("Send the summary by mail?", schema={"type": "boolean"})
        yield "Done."
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.codecs.execution_messages import ExecutionRequest


@dataclass(frozen=True, slots=True)
class Text:
    """A piece of the answer's text; consecutive pieces are coalesced before they are sent."""

    content: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model calls tool `name` with JSON object `arguments`; `call_id` pairs the result."""

    call_id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool's result, answering the `ToolCall` with the same `call_id`."""

    call_id: str
    content: str


@dataclass(frozen=True, slots=True)
class Ask:
    """Pause for a human: the attempt ends `input_required`; the answer comes in a later request's
    `inputs`. Nothing the handler yields after it is sent."""

    prompt: str
    schema: dict[str, Any] | None = None


Yielded = str | Text | ToolCall | ToolResult | Ask
Handler = Callable[[ExecutionRequest], AsyncIterator[Yielded]]
"""An execution service: an async generator of answer parts for one attempt of one request."""


def text(content: str) -> Text:
    """A piece of answer text."""
    return Text(content)


def tool_call(call_id: str, name: str, arguments: dict[str, Any] | None = None) -> ToolCall:
    """A call of tool `name` with JSON object `arguments`."""
    return ToolCall(call_id, name, dict(arguments or {}))


def tool_result(call_id: str, content: str) -> ToolResult:
    """The result of the call `call_id`."""
    return ToolResult(call_id, content)


def ask(prompt: str, schema: dict[str, Any] | None = None) -> Ask:
    """Ask the user `prompt` (answer shaped by JSON Schema `schema`, if given); ends the attempt."""
    return Ask(prompt, schema)
