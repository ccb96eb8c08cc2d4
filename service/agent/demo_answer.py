"""The reference agent's deterministic "model": the same request always gets the same answer."""

from __future__ import annotations

from orchestrator.codecs.execution_messages import ExecutionRequest


def answer_for(request: ExecutionRequest) -> str:
    """`[<agent name, or agent id if unnamed>] You said: <content>`; model settings are ignored."""
    return f"[{request.agent.name or request.agent_id}] You said: {request.content}"


APPROVALS = frozenset({"yes", "y", "ok", "true", "approve", "approved"})


def confirm_answer(request: ExecutionRequest, action: str, response: str) -> str:
    """What the demo agent says once the user answered its `/confirm` question."""
    name = request.agent.name or request.agent_id
    if response.strip().lower() in APPROVALS:
        return f"[{name}] Approved: {action}. Done."
    return f"[{name}] Not approved ({response.strip()!r}): {action}. Nothing was done."


def split_answer(answer: str, parts: int) -> list[str]:
    """Split `answer` into `parts` non-empty pieces of near-equal length (fewer if it is shorter).

    The pieces joined give back `answer`; an empty answer is one empty piece, so a stream always
    has at least one chunk.
    """
    count = max(1, min(parts, len(answer)))
    size, extra = divmod(len(answer), count)
    pieces: list[str] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        pieces.append(answer[start:end])
        start = end
    return pieces
