"""What the `history` KV bucket holds: each session's ended turns, the source of
`ExecutionRequest.history`."""

from __future__ import annotations

import msgspec

from orchestrator.codecs.execution_messages import TurnRole


class RecordedTurn(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One turn in the `history` bucket: a `HistoryTurn` and the task it came from."""

    task_id: str
    role: TurnRole
    content: str
    partial: bool = False


class SessionHistory(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The value of one session's key in the `history` bucket: its ended turns, oldest first,
    already bounded by `ORCH_HISTORY_MAX_TURNS` and `ORCH_HISTORY_MAX_BYTES`."""

    turns: list[RecordedTurn] = []
