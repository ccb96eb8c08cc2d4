"""The conversation history of each session, kept for `ExecutionRequest.history`.

Bucket `history` (KV), one key per session, `<tenant>.<user>.<session_id>`; the value is a
`SessionHistory`: the session's ended turns, oldest first, already bounded. Reading the history
for a new message is one KV get, however long the session; writing it is one compare-and-set when
a task ends. The bucket is durable (file storage, replicated like the others), so history survives
any restart; its keys expire `ORCH_SESSION_TTL` after their last write, like the session.

What a task contributes when it ends:

| task ends        | turns added                                                       |
|------------------|-------------------------------------------------------------------|
| completed        | the user message, then the answer (if not empty)                  |
| cancelled        | the user message, then the text stored so far, marked `partial`   |
| failed/timed out | the user message only (the model sees the question went unanswered) |

Turns are recorded in the order tasks end (for one session at a time, the order they ran). Each
turn carries its task id, so recording the same task twice (a redelivered task whose first run
recorded before it died) changes nothing. Bounds (`ORCH_HISTORY_MAX_TURNS`,
`ORCH_HISTORY_MAX_BYTES`, counted on the text's UTF-8 bytes) keep the newest whole turns; they are
applied when writing, and again when reading, so lowering a setting takes effect at once.
"""

from __future__ import annotations

from orchestrator.codecs.errors import Conflict
from orchestrator.codecs.execution_messages import HistoryTurn, TurnRole
from orchestrator.codecs.session_history import RecordedTurn, SessionHistory
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.ids import owned_key
from orchestrator.service.store.kv import TypedBucket


def newest_within(turns: list[RecordedTurn], max_turns: int, max_bytes: int) -> list[RecordedTurn]:
    """The newest turns that fit both bounds, oldest first; a turn never gets cut in two."""
    kept: list[RecordedTurn] = []
    size = 0
    for turn in reversed(turns):
        if len(kept) == max_turns:
            break
        size += len(turn.content.encode())
        if size > max_bytes:
            break
        kept.append(turn)
    kept.reverse()
    return kept


class HistoryStore:
    """Loads a session's earlier turns and records the turns of a task that ended."""

    def __init__(self, bucket: TypedBucket[SessionHistory], settings: OrchestratorSettings) -> None:
        self.bucket = bucket
        self._max_turns = settings.history_max_turns
        # The history travels inside one request and is stored as one KV value: both must fit.
        self._max_bytes = min(settings.history_max_bytes, settings.max_message_bytes // 2)
        self._retries = settings.kv_conflict_retries

    async def load(self, tenant_id: str, user_id: str, session_id: str) -> list[HistoryTurn]:
        """The session's earlier turns, oldest first, within the bounds (one KV read)."""
        if self._max_turns == 0 or self._max_bytes == 0:
            return []
        found = await self.bucket.get(owned_key(tenant_id, user_id, session_id))
        if found is None:
            return []
        turns = newest_within(found.value.turns, self._max_turns, self._max_bytes)
        return [HistoryTurn(role=t.role, content=t.content, partial=t.partial) for t in turns]

    async def record_turn(
        self,
        tenant_id: str,
        user_id: str,
        session_id: str,
        task_id: str,
        user_message: str,
        answer: str | None = None,
        *,
        partial: bool = False,
    ) -> None:
        """Append a task's turns: its user message and, if given and not empty, its answer.

        `answer` None means the task produced no answer worth remembering (failed, timed out);
        `partial` marks an answer cut short (cancelled). Recording a task twice is a no-op.
        """
        if self._max_turns == 0 or self._max_bytes == 0:
            return
        new = [RecordedTurn(task_id=task_id, role=TurnRole.USER, content=user_message)]
        if answer:
            new.append(
                RecordedTurn(
                    task_id=task_id, role=TurnRole.ASSISTANT, content=answer, partial=partial
                )
            )

        def add(history: SessionHistory) -> SessionHistory | None:
            if any(turn.task_id == task_id for turn in history.turns):
                return None
            turns = newest_within([*history.turns, *new], self._max_turns, self._max_bytes)
            return SessionHistory(turns=turns)

        key = owned_key(tenant_id, user_id, session_id)
        for _ in range(self._retries):
            if await self.bucket.update(key, add) is not None:
                return
            try:
                await self.bucket.create(key, add(SessionHistory()) or SessionHistory())
                return
            except Conflict:
                continue  # another writer created the key first: update what it wrote
        raise Conflict(f"gave up recording the turn of task {task_id} in {key}")
