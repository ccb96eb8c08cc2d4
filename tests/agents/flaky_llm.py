"""A nondeterministic test execution service on the SDK, run as a real process:
`python tests/agents/flaky_llm.py` (`support.programs.FlakyAgent` starts and stops it).

Like an LLM, a retried attempt writes other text than the attempt before it. The first attempt
this process sees of a task misbehaves as the message's first word says; every later attempt
answers `Answer B: <rest of the message>` in several parts.

| content          | first attempt of the task                                               |
|------------------|-------------------------------------------------------------------------|
| `error K ...`    | K parts of text A, then an `upstream_unavailable` error reply           |
| `hang K ...`     | K parts of text A, then nothing but the SDK's heartbeats (no reply)      |
| `late K ...`     | K parts of text A, then no reply; once the next attempt has started it   |
|                  | publishes more parts of the first attempt to the first attempt's stream |
|                  | subject (as a service that ignores cancels would); the next attempt     |
|                  | answers only after those were sent                                       |
| `block ...`      | attempt 1: one part, then waits for ever (the test kills the process)    |
| `forge ...`      | publishes forged, out-of-order, stale, oversized and malformed messages |
|                  | to its own stream subject, then answers normally                        |
| `flood ...`      | attempt 1: valid 4 KB parts as fast as it can (at most 40 MB), no reply |
| `tokens N`       | N one-word parts at full speed                                           |
| `tools`          | text, a tool call, its result, text                                      |
| `history ...`    | the request's history as JSON `[[role, content], ...]`                  |
| anything else    | `Answer B: <content>`                                                    |
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import nats
import nats.aio.msg

from orchestrator.codecs.errors import UpstreamUnavailable
from orchestrator.codecs.execution_messages import ExecutionRequest, TextPart
from orchestrator.codecs.wire import encode
from orchestrator.service.agent.parts import Yielded, text, tool_call, tool_result
from orchestrator.service.agent.sdk import run_service

KIND = "flaky"
_first_attempt: dict[str, int] = {}
_later_requests: dict[str, asyncio.Future[ExecutionRequest]] = {}
_late_parts_sent: dict[str, asyncio.Event] = {}
_detached: set[asyncio.Task] = set()
_raw: list[nats.aio.client.Client] = []


def text_a(count: int) -> list[str]:
    return [f"Attempt A part {i}. " for i in range(count)]


def text_b(content: str) -> list[str]:
    words = f"Answer B: {content}".split(" ")
    return [word + " " for word in words[:-1]] + [words[-1]]


async def raw_connection() -> nats.aio.client.Client:
    """A second connection of this process, for what the SDK would never publish."""
    if not _raw:
        _raw.append(await nats.connect(os.environ["ORCH_NATS_URL"]))
    return _raw[0]


def _later_request(task_id: str) -> asyncio.Future[ExecutionRequest]:
    return _later_requests.setdefault(task_id, asyncio.get_running_loop().create_future())


async def publish_routed(messages: list[tuple[str, bytes]]) -> None:
    """Publish on the second connection; return once the server has routed every message.

    `flush()` is no barrier here: nats-py writes its PING straight to the socket, ahead of the
    publishes still in its pending buffer, so the PONG may come back before the server read them,
    and what the SDK connection publishes next can overtake them (measured: 10-13 rounds in 300
    on an idle machine, 0 once a second PING followed the publishes). The forgeries then reach
    the orchestrator after the attempt ended and are counted `after_end`. This connection hears
    its own messages instead: the server hands a message to every subscriber as it routes it,
    so once the copies are back, the orchestrator's copies are queued ahead of anything later.
    """
    nc = await raw_connection()
    waiting = len(messages)
    routed = asyncio.Event()

    async def echoed(_msg: nats.aio.msg.Msg) -> None:
        nonlocal waiting
        waiting -= 1
        if waiting == 0:
            routed.set()

    # The SUBs go into the same pending buffer as the publishes, so the server has them first.
    subs = [await nc.subscribe(subject, cb=echoed) for subject in {s for s, _ in messages}]
    try:
        for subject, payload in messages:
            await nc.publish(subject, payload)
        await asyncio.wait_for(routed.wait(), 30)
    finally:
        for sub in subs:
            await sub.unsubscribe()


async def publish_late_parts(request: ExecutionRequest, start: int) -> None:
    """Once the next attempt started: more parts of `request`'s attempt, on its own stream
    subject and (as a confused service would) on the next attempt's."""
    later = await _later_request(request.task_id)
    messages = []
    for index in range(start, start + 3):
        part = encode(
            TextPart(
                task_id=request.task_id, attempt=request.attempt, index=index, content="LATE A. "
            )
        )
        messages += [(request.stream_subject, part), (later.stream_subject, part)]
    await publish_routed(messages)
    _late_parts_sent.setdefault(request.task_id, asyncio.Event()).set()


async def publish_forgeries(request: ExecutionRequest) -> None:
    """Forged messages on the attempt's own stream subject, routed before the real answer."""
    subject, task, attempt = request.stream_subject, request.task_id, request.attempt
    forged = [
        encode(TextPart(task_id="someone-else", attempt=attempt, index=0, content="FORGED")),
        encode(TextPart(task_id=task, attempt=attempt - 1, index=0, content="STALE")),
        encode(TextPart(task_id=task, attempt=attempt, index=1000, content="OUT OF ORDER")),
        # Far over the orchestrator's 64 KiB part bound (ORCH_EXECUTION_PART_MAX_BYTES).
        encode(TextPart(task_id=task, attempt=attempt, index=0, content="X" * 200_000)),
        b'{"type": "chat.response", "content": "FORGED"}',
    ]
    await publish_routed([(subject, payload) for payload in forged])


async def flood(request: ExecutionRequest, parts: int = 10_000) -> None:
    """Valid parts of the attempt, each the next index, faster than anyone stores them; stops
    when the orchestrator cancels the attempt (the SDK cancels this handler)."""
    nc = await raw_connection()
    for index in range(parts):
        part = TextPart(
            task_id=request.task_id, attempt=request.attempt, index=index, content="F" * 4000
        )
        await nc.publish(request.stream_subject, encode(part))
        if index % 100 == 99:
            await asyncio.sleep(0)  # let the cancel in


async def handle(request: ExecutionRequest) -> AsyncIterator[Yielded]:
    """The agent's behaviour, chosen by the message's first word and the attempt."""
    command, _, rest = request.content.partition(" ")
    first = _first_attempt.setdefault(request.task_id, request.attempt)
    if request.attempt != first and not _later_request(request.task_id).done():
        _later_request(request.task_id).set_result(request)
    if command in ("error", "hang", "late") and request.attempt == first:
        count = int(rest.split(" ", 1)[0])
        for piece in text_a(count):
            yield piece
            await asyncio.sleep(0.01)
        if command == "error":
            raise UpstreamUnavailable("attempt A gave up")
        if command == "late":
            # Detached, so the cancel the orchestrator sends does not stop it.
            late = asyncio.create_task(publish_late_parts(request, count))
            _detached.add(late)
            late.add_done_callback(_detached.discard)
        await asyncio.Event().wait()
    if command == "late":
        await _late_parts_sent.setdefault(request.task_id, asyncio.Event()).wait()
    match command:
        case "flood" if request.attempt == first:
            await flood(request)
            await asyncio.Event().wait()
        case "block" if request.attempt == 1:
            yield "started "
            await asyncio.Event().wait()
        case "forge":
            await publish_forgeries(request)
        case "tokens":
            for i in range(int(rest)):
                yield f"w{i} "
            return
        case "tools":
            yield text("Let me look. ")
            yield tool_call("c1", "search", {"q": "nats"})
            yield tool_result("c1", "3 hits")
            yield text("Found 3.")
            return
        case "history":
            yield json.dumps([[turn.role.value, turn.content] for turn in request.history])
            return
    for piece in text_b(request.content):
        yield piece


if __name__ == "__main__":
    run_service(KIND, handle)
