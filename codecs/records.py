"""The durable records kept in the `sessions` and `tasks` KV buckets (JSON values).

Records are written with every field, defaults and nulls included, so an operator's
`nats kv get sessions <key> | jq .status` always finds what it filters on; fields added later have
defaults, so older records (which omitted defaults) still decode.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec

from orchestrator.codecs.errors import ErrorBody
from orchestrator.codecs.execution_messages import InputRequest, InputRound
from orchestrator.codecs.types import Identifier, Metadata


class SessionStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class Session(msgspec.Struct, kw_only=True):
    """A chat session; keyed `<tenant_id>.<user_id>.<session_id>` in the `sessions` bucket."""

    session_id: Identifier
    tenant_id: Identifier
    user_id: Identifier
    agent_id: Identifier
    status: SessionStatus = SessionStatus.OPEN
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    expires_at: datetime
    closed_at: datetime | None = None
    close_reason: str | None = None
    metadata: Metadata = {}
    first_event_seq: int = 0
    # True from the write that closes the session until its `session.closed` event is stored:
    # whoever finds it set (a retried close, the sweeper) writes the event (de-duplicated).
    close_event_pending: bool = False


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    INPUT_REQUIRED = "input_required"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
)


class ChatTask(msgspec.Struct, kw_only=True):
    """One chat message's execution; keyed `<tenant_id>.<user_id>.<task_id>` in `tasks`."""

    task_id: Identifier
    session_id: Identifier
    tenant_id: Identifier
    user_id: Identifier
    agent_id: Identifier
    status: TaskStatus = TaskStatus.QUEUED
    content: str
    created_at: datetime
    updated_at: datetime
    attempts: int = 0
    owner: str | None = None
    answer: str | None = None
    error: ErrorBody | None = None
    message_seq: int = 0
    correlation_id: str | None = None
    # Stream sequence of the work item whose delivery runs the task: any other item for a
    # running task is a duplicate, while a redelivery of this one is a takeover.
    work_seq: int = 0
    # Set while `input_required`: the question and since when it waits for an answer.
    input: InputRequest | None = None
    input_since: datetime | None = None
    # Earlier questions and their answers, sent with every later execution request.
    inputs: list[InputRound] = []
    # The execution attempt whose stored text is the answer (0: none ended yet). Attempt numbers
    # are per task and never reused: run n's attempts start at (n - 1) * max_attempts + 1.
    attempt: int = 0
    # Work items of this task dropped because it was not its session's head yet: part of the
    # item's de-dup id, so the item published when it is head is stored, not de-duplicated.
    dispatches: int = 0


class WorkItem(msgspec.Struct, kw_only=True, frozen=True):
    """The head turn of a session on the work stream: everything its task record holds when it
    is accepted, so a worker that gets the item before the record writes the record itself."""

    task_id: str
    tenant_id: str
    user_id: str
    session_id: str
    agent_id: str
    content: str
    correlation_id: str = ""
    message_seq: int = 0
    created_at: datetime | None = None


class QueuedTurn(msgspec.Struct, kw_only=True, frozen=True):
    """One unfinished turn in a user's turn queue."""

    task_id: str
    session_id: str
    at: datetime


class TurnQueue(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A user's unfinished turns (queued, running, input_required) in acceptance order.

    Keyed `<tenant_id>.<user_id>.turns.queue` in `tasks`. The first entry of a session is its head:
    the only turn of that session with a work item. Its length is the user's in-flight bound.
    """

    turns: list[QueuedTurn] = []


class SendReceipt(msgspec.Struct, kw_only=True, frozen=True):
    """The task a client's send id was given; keyed `<tenant>.<user>.sends.<digest>` in `tasks`."""

    task_id: str
    session_id: str
    at: datetime
