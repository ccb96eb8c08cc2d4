"""WebSocket clients of the streams section: one turn = one streamed answer, checked token by token.

The LLM-like agent (llm_agent.py) writes token i as `<i>:<word> ` and stamps token 0 with its
wall-clock nanoseconds, so a client reads first-token overhead and lost, duplicated and
out-of-order tokens from the text alone, whichever system carried it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import msgspec


class StreamFailed(RuntimeError):
    """The system answered a turn with an error or closed the socket."""


class _Data(msgspec.Struct):
    content: str = ""
    attempt: int = 0


class _Frame(msgspec.Struct):
    """An edge frame (`data` holds the event) or a relayed part (`content` at the top)."""

    type: str = ""
    data: _Data | None = None
    content: str = ""
    attempt: int = 0


_decode = msgspec.json.Decoder(_Frame).decode


@dataclass
class Meter:
    """Tokens received inside the window every client is streaming in (for tokens/s)."""

    window_start: float
    window_end: float
    tokens: int = 0

    def add(self, count: int) -> None:
        if self.window_start <= time.monotonic() <= self.window_end:
            self.tokens += count

    @property
    def per_second(self) -> float:
        return self.tokens / (self.window_end - self.window_start)


@dataclass
class TurnCheck:
    """What one turn delivered, judged against the `expected` tokens."""

    overhead: float | None = None  # seconds from the agent's token 0 to its arrival here
    tokens: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    first_problem: str | None = field(default=None)


def check(text: str, expected: int, overhead: float | None) -> TurnCheck:
    """Judge a turn's text: every index 0..expected-1 once, ascending."""
    result = TurnCheck(overhead=overhead)
    seen: set[int] = set()
    last = -1
    for token in text.split():
        head, _, _ = token.partition(":")
        if not head.isdigit():
            result.first_problem = result.first_problem or f"malformed token {token[:40]!r}"
            continue
        index = int(head)
        result.tokens += 1
        if index in seen:
            result.duplicated += 1
        elif index < last:
            result.out_of_order += 1
        seen.add(index)
        last = max(last, index)
    result.lost = sum(1 for i in range(expected) if i not in seen)
    return result


def _stamp(content: str) -> int | None:
    """The agent's nanoseconds in token 0 (`0:<ns> `), if `content` starts with it."""
    head, _, rest = content.partition(":")
    if head != "0":
        return None
    stamp = rest.split(" ", 1)[0]
    return int(stamp) if stamp.isdigit() else None


class StreamSocket:
    """One client socket; `turn()` sends a message and reads its answer to the end."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, orchestrator: bool) -> None:
        self.ws = ws
        self.orchestrator = orchestrator

    async def turn(self, meter: Meter, expected: int, timeout: float) -> TurnCheck:
        if self.orchestrator:
            frame = {"type": "chat.message", "id": uuid.uuid4().hex, "data": {"content": "hi"}}
            await self.ws.send_str(msgspec.json.encode(frame).decode())
        else:
            await self.ws.send_str("go")
        pieces: list[str] = []
        attempt = 0
        overhead: float | None = None
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            received_ns = time.time_ns()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise StreamFailed(f"socket ended: {msg.type.name} {msg.data!r}"[:200])
            frame = _decode(msg.data)
            if frame.type in ("chat.response", "done"):
                return check("".join(pieces), expected, overhead)
            if frame.type == "error":
                raise StreamFailed(msg.data[:300])
            if frame.type == "chat.chunk" and frame.data is not None:
                content, this_attempt = frame.data.content, frame.data.attempt
            elif frame.type == "text":
                content, this_attempt = frame.content, frame.attempt
            else:
                continue
            if this_attempt > attempt:
                # The client rule on retries: a higher attempt discards the earlier text.
                attempt, pieces = this_attempt, []
            if overhead is None:
                stamp = _stamp(content)
                overhead = (received_ns - stamp) / 1e9 if stamp is not None else None
            pieces.append(content)
            meter.add(content.count(" "))
