"""What the orchestrator and execution services say to each other (execution contract v2).

One attempt of one chat task, from the execution service's side (docs/execution.md has the JSON):

1. It receives an `ExecutionRequest` on `<p>.execution.chat.run` (queue group `execution`).
   `task_id` is the idempotency key; `attempt` counts from 1; `history` holds the session's
   earlier turns, oldest first, not including the current message `content`.
2. It publishes the answer's `Part`s to `stream_subject` (core NATS, a subject the orchestrator
   named for this one attempt), `index` from 0 and in order, and a `Heartbeat` at least every
   `heartbeat_interval` seconds while it works. It never publishes anywhere else.
3. It replies an `ExecutionResult` (status `completed` or `input_required`, and how many parts it
   sent), or the error envelope with micro error headers.

The orchestrator validates every part (attempt, order, type, size), stores the parts of the
current attempt in the session's event stream (text coalesced per flush) and drops anything else.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import msgspec

from orchestrator.codecs.agent_configs import AgentConfig, ModelParams

PART_CONTENT_MAX = 256 * 1024
"""Hard ceiling of one part's text; the effective bound is a setting at most this large."""


class TurnRole(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class HistoryTurn(
    msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    """One earlier message of the conversation, as LLM chat APIs take it.

    `partial` marks an assistant answer that was cut short (its task was cancelled): the text the
    user saw, not a finished answer. A failed turn contributes only its user message.
    """

    role: TurnRole
    content: str
    partial: bool = False


class InputRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What an execution service asks the user before it can go on (e.g. a tool approval)."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    schema: dict[str, Any] | None = None


class InputRound(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A question the task asked earlier and the user's answer to it."""

    request: InputRequest
    response: str


class ExecutionAgent(msgspec.Struct, kw_only=True, frozen=True):
    """An agent as execution services see it: what answering needs (its name and model), none of
    what only the orchestrator decides or holds (access, busy policy, webhook URL).

    Unknown fields are ignored, not refused: during a rolling upgrade an older orchestrator may
    still send the whole agent config.
    """

    name: str = ""
    model: ModelParams = ModelParams()

    @classmethod
    def of(cls, config: AgentConfig) -> ExecutionAgent:
        """The part of an agent config an execution service gets with each task."""
        return cls(name=config.name, model=config.model)


class ExecutionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Run one attempt of one chat task."""

    task_id: str
    attempt: int
    session_id: str
    tenant_id: str
    user_id: str
    agent_id: str
    agent: ExecutionAgent
    content: str
    history: list[HistoryTurn] = []
    inputs: list[InputRound] = []
    stream_subject: str = ""
    heartbeat_interval: float = 0.0


class TextPart(msgspec.Struct, tag="text", tag_field="type", kw_only=True, frozen=True):
    """A piece of the answer's text."""

    task_id: str
    attempt: int
    index: Annotated[int, msgspec.Meta(ge=0)]
    content: str


class ToolCallPart(msgspec.Struct, tag="tool_call", tag_field="type", kw_only=True, frozen=True):
    """The model calls a tool; `arguments` is a JSON object."""

    task_id: str
    attempt: int
    index: Annotated[int, msgspec.Meta(ge=0)]
    call_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    arguments: dict[str, Any] = {}


class ToolResultPart(
    msgspec.Struct, tag="tool_result", tag_field="type", kw_only=True, frozen=True
):
    """A tool's result, answering the call with the same `call_id`."""

    task_id: str
    attempt: int
    index: Annotated[int, msgspec.Meta(ge=0)]
    call_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    content: str


class Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="type", kw_only=True, frozen=True):
    """The attempt is alive; sent on `stream_subject` while the service works. Carries no index."""

    task_id: str
    attempt: int


Part = TextPart | ToolCallPart | ToolResultPart
StreamMessage = TextPart | ToolCallPart | ToolResultPart | Heartbeat


class ResultStatus(StrEnum):
    COMPLETED = "completed"
    INPUT_REQUIRED = "input_required"


class ExecutionResult(msgspec.Struct, kw_only=True, frozen=True):
    """The end of one attempt. `parts` is how many parts the service published to the stream
    subject, so the orchestrator knows when it holds them all; `input` is set exactly when the
    status is `input_required`. `content` is informative: the answer is the stored text parts."""

    task_id: str
    attempt: int = 0
    status: ResultStatus = ResultStatus.COMPLETED
    parts: int = 0
    input: InputRequest | None = None
    content: str = ""


class ExecutionCancel(msgspec.Struct, kw_only=True, frozen=True):
    """Stop work on a task: every attempt, or only `attempt` when it is set."""

    task_id: str
    attempt: int = 0
