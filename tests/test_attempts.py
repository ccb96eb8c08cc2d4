"""Attempt-scoped streaming with a nondeterministic agent (a real SDK process): what is stored in
the session stream, and what a client sees live and on resume, whatever the first attempt did."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from agents.flaky_llm import text_a, text_b
from conftest import wait_until
from edge_client import ChatClient
from support.calls import call
from support.chat_load import session_log
from support.programs import FlakyAgent
from support.stack import Stack, start_stack, stop_stack

from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.edge_server import Edge
from orchestrator.service.runtime.nats_server import NatsServer

FINAL = ("completed", "failed", "timed_out", "cancelled")
ATTEMPTS = dict(
    execution_timeout=3.0,
    execution_heartbeat_interval=0.3,
    execution_heartbeat_timeout=6.0,
    execution_max_retries=2,
)

Stored = list[tuple[int, dict]]


@pytest.fixture
async def orchestrator(nats_server: NatsServer) -> AsyncIterator[Stack]:
    stack = await start_stack(nats_server, agent=None, **ATTEMPTS)
    try:
        yield stack
    finally:
        await stop_stack(stack)


@pytest.fixture
async def flaky(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[FlakyAgent]:
    agent = await FlakyAgent(nats_server.url, tmp_path / "flaky.log").start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
async def edge(orchestrator: Stack) -> AsyncIterator[Edge]:
    edge = Edge(
        orchestrator.settings.model_copy(update={"edge_port": 0}),
        orchestrator.nc,
        orchestrator.subjects,
    )
    await edge.start()
    try:
        yield edge
    finally:
        await edge.stop()


def task_events(stored: Stored, task_id: str) -> Stored:
    return [(seq, event) for seq, event in stored if event.get("task_id") == task_id]


def check_invariants(stored: Stored, task_id: str) -> dict[int, str]:
    """Assert the attempt invariants for one task; returns its chunk text per attempt."""
    mine = task_events(stored, task_id)
    finals = [
        i for i, (_, e) in enumerate(mine) if e["type"] == "task.status" and e["status"] in FINAL
    ]
    assert finals == [len(mine) - 1], f"an event follows the terminal status: {mine}"
    running = {
        e["attempt"]: seq
        for seq, e in mine
        if e["type"] == "task.status" and e["status"] == "running"
    }
    chunks = [(seq, e) for seq, e in mine if e["type"] == "chat.chunk"]
    keys = [(e["attempt"], e["index"]) for _, e in chunks]
    assert len(keys) == len(set(keys)), f"a part was stored twice: {keys}"
    texts: dict[int, str] = {}
    for seq, chunk in chunks:
        attempt = chunk["attempt"]
        assert attempt in running and running[attempt] < seq, "a chunk before its attempt began"
        later = [start for a, start in running.items() if a > attempt]
        assert all(seq < start for start in later), "a chunk stored after a later attempt began"
        texts[attempt] = texts.get(attempt, "") + chunk["content"]
    for attempt in texts:
        indices = [e["index"] for _, e in chunks if e["attempt"] == attempt]
        assert indices == sorted(indices) and indices[0] == 0, indices
    status = mine[-1][1]
    if status["status"] == "completed":
        [response] = [e for _, e in mine if e["type"] == "chat.response"]
        assert response["attempt"] == max(running) == status["attempt"]
        assert texts.get(response["attempt"], "") == response["content"]
    return texts


def client_text(frames: Stored, task_id: str) -> str:
    """What a client shows for a task by the documented rule: text of a higher attempt (or a
    `running` status with a higher attempt) replaces all text of earlier attempts."""
    attempt, text = 0, ""
    for _, event in task_events(frames, task_id):
        higher = event.get("attempt", 0) > attempt
        if event["type"] == "task.status" and event["status"] == "running" and higher:
            attempt, text = event["attempt"], ""
        elif event["type"] == "chat.chunk":
            if higher:
                attempt, text = event["attempt"], ""
            if event["attempt"] == attempt:
                text += event["content"]
    return text


def as_stored(frames: list[dict]) -> Stored:
    return [(frame["seq"], frame["data"]) for frame in frames if "seq" in frame]


async def stored_events(stack: Stack, session_id: str) -> Stored:
    return [(r["seq"], r["event"]) for r in await session_log(stack.nc, "alice", session_id)]


async def send(stack: Stack, session_id: str, content: str) -> str:
    reply = await call(stack.nc, "chat.send", {"session_id": session_id, "content": content})
    assert reply.error is None, reply.data
    return reply.data["task_id"]


async def wait_final(stack: Stack, task_id: str, timeout: float = 30.0) -> dict:
    views: list[dict] = []

    async def final() -> bool:
        views.append((await call(stack.nc, "task.get", {"task_id": task_id})).data)
        return views[-1].get("status") in FINAL

    await wait_until(final, timeout=timeout, interval=0.1, message=f"task {task_id} final")
    return views[-1]


async def open_session(stack: Stack) -> str:
    reply = await call(stack.nc, "session.start", {"agent_id": "demo"})
    assert reply.error is None, reply.data
    return reply.data["session_id"]


@pytest.mark.parametrize("misbehaviour", ["error", "hang", "late"])
async def test_a_retry_with_other_text_gives_one_clean_answer_stored_live_and_resumed(
    orchestrator: Stack, flaky: FlakyAgent, edge: Edge, misbehaviour: str
) -> None:
    async with aiohttp.ClientSession() as http:
        token = mint_token(edge.settings, "dev", "alice")
        session_id = await open_session(orchestrator)
        live = ChatClient(http, token, session_id)
        await live.connect(edge.url, after_seq=0)
        question = "what is the capital of France"
        task_id = await send(orchestrator, session_id, f"{misbehaviour} 3 {question}")
        view = await wait_final(orchestrator, task_id)
        assert view["status"] == "completed", view

        stored = await stored_events(orchestrator, session_id)
        texts = check_invariants(stored, task_id)
        answer = "".join(text_b(f"{misbehaviour} 3 {question}"))
        assert texts[max(texts)] == answer
        first = texts[min(texts)]
        assert first and "".join(text_a(3)).startswith(first), "attempt 1's parts were stored"
        assert not any("LATE" in e.get("content", "") for _, e in stored)

        terminal = stored[-1][0]
        assert await live.wait(lambda: live.last_seq >= terminal)
        assert check_invariants(as_stored(live.frames), task_id) == texts
        assert client_text(as_stored(live.frames), task_id) == answer

        resumed = ChatClient(http, token, session_id)
        await resumed.connect(edge.url, after_seq=0)
        assert await resumed.wait(lambda: resumed.last_seq >= terminal)
        assert as_stored(resumed.frames) == stored
        assert client_text(as_stored(resumed.frames), task_id) == answer
        await live.close()
        await resumed.close()
    if misbehaviour == "late":
        # The late parts reached the next attempt's subject too, and were refused there.
        await wait_until(lambda: orchestrator.orchestrator.execution.dropped["wrong_attempt"] == 3)


async def test_a_silent_agent_is_retried_after_the_heartbeat_timeout(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    # The execution timeout is far beyond the test's patience: only silence can end attempt 1.
    stack = await start_stack(
        nats_server, agent=None, **{**ATTEMPTS, "execution_timeout": 600.0,
                                    "execution_heartbeat_timeout": 2.0}
    )  # fmt: skip
    first = await FlakyAgent(nats_server.url, tmp_path / "first.log").start()
    second = FlakyAgent(nats_server.url, tmp_path / "second.log")
    try:
        session_id = await open_session(stack)
        task_id = await send(stack, session_id, "block forever")

        async def streaming() -> bool:
            events = task_events(await stored_events(stack, session_id), task_id)
            return any(e["type"] == "chat.chunk" for _, e in events)

        await wait_until(streaming, message="attempt 1 streaming")
        await second.start()
        first.kill()
        view = await wait_final(stack, task_id, timeout=60.0)
        assert view["status"] == "completed", view
        texts = check_invariants(await stored_events(stack, session_id), task_id)
        assert texts == {1: "started ", 2: "".join(text_b("block forever"))}
    finally:
        first.kill()
        second.stop()
        await stop_stack(stack)


async def test_forged_stale_out_of_order_oversized_and_malformed_parts_are_dropped_and_counted(
    orchestrator: Stack, flaky: FlakyAgent
) -> None:
    session_id = await open_session(orchestrator)
    task_id = await send(orchestrator, session_id, "forge now")
    assert (await wait_final(orchestrator, task_id))["status"] == "completed"
    texts = check_invariants(await stored_events(orchestrator, session_id), task_id)
    assert texts == {1: "".join(text_b("forge now"))}
    dropped = orchestrator.orchestrator.execution.dropped
    expected = {"wrong_task": 1, "wrong_attempt": 1, "out_of_order": 1, "oversized": 1,
                "malformed": 1}  # fmt: skip
    # A heartbeat that crosses the attempt's end is dropped too (`after_end`): timing, not forgery.
    await wait_until(
        lambda: {reason: dropped.get(reason, 0) for reason in expected} == expected,
        message=lambda: f"drops {expected}: {dict(dropped)}",
    )
    assert set(dropped) <= {*expected, "after_end"}, dict(dropped)


async def test_two_hundred_parts_at_full_speed_become_far_fewer_chunk_events(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    stack = await start_stack(nats_server, agent=None, **{**ATTEMPTS, "stream_flush_ms": 100.0})
    # The agent's own coalescing is off: every token is a part on the wire.
    agent = await FlakyAgent(nats_server.url, tmp_path / "a.log", stream_flush_ms="0").start()
    try:
        session_id = await open_session(stack)
        task_id = await send(stack, session_id, "tokens 200")
        assert (await wait_final(stack, task_id))["status"] == "completed"
        stored = await stored_events(stack, session_id)
        texts = check_invariants(stored, task_id)
        assert texts == {1: "".join(f"w{i} " for i in range(200))}
        chunks = [e for _, e in task_events(stored, task_id) if e["type"] == "chat.chunk"]
        assert len(chunks) <= 40, len(chunks)
    finally:
        agent.stop()
        await stop_stack(stack)


async def test_tool_calls_and_results_are_events_and_frames_between_the_text(
    orchestrator: Stack, flaky: FlakyAgent, edge: Edge
) -> None:
    async with aiohttp.ClientSession() as http:
        session_id = await open_session(orchestrator)
        client = ChatClient(http, mint_token(edge.settings, "dev", "alice"), session_id)
        await client.connect(edge.url, after_seq=0)
        task_id = await send(orchestrator, session_id, "tools")
        assert (await wait_final(orchestrator, task_id))["status"] == "completed"
        stored = await stored_events(orchestrator, session_id)
        texts = check_invariants(stored, task_id)
        assert texts == {1: "Let me look. Found 3."}
        kinds = [e["type"] for _, e in task_events(stored, task_id)]
        assert kinds == ["message.accepted", "task.status", "chat.chunk", "tool.call",
                         "tool.result", "chat.chunk", "chat.response", "task.status"]  # fmt: skip
        [(_, tool_call)] = [(s, e) for s, e in stored if e["type"] == "tool.call"]
        assert (tool_call["call_id"], tool_call["name"], tool_call["arguments"]) == (
            "c1",
            "search",
            {"q": "nats"},
        )
        assert await client.wait(lambda: client.last_seq >= stored[-1][0])
        assert [f["type"] for f in client.frames if f["type"].startswith("tool.")] == [
            "tool.call",
            "tool.result",
        ]
        await client.close()


async def test_a_stream_flooding_past_the_pending_limits_fails_the_attempt_and_is_retried(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    # A small bound (32 parts of 4 KB), and only the bound can end attempt 1: the agent never
    # replies to it and heartbeats all along.
    stack = await start_stack(
        nats_server, agent=None,
        **{**ATTEMPTS, "execution_timeout": 600.0, "execution_stream_pending_bytes": 128 * 1024},
    )  # fmt: skip
    agent = await FlakyAgent(nats_server.url, tmp_path / "flood.log").start()
    try:
        session_id = await open_session(stack)
        task_id = await send(stack, session_id, "flood now")
        view = await wait_final(stack, task_id, timeout=60.0)
        assert view["status"] == "completed", view
        texts = check_invariants(await stored_events(stack, session_id), task_id)
        # Attempt 1's accepted parts may be stored; the answer is attempt 2's, whole.
        assert texts[2] == "".join(text_b("flood now")) and set(texts) <= {1, 2}, texts
        dropped = stack.orchestrator.execution.dropped
        assert dropped["slow_consumer"] >= 1, dict(dropped)
    finally:
        agent.stop()
        await stop_stack(stack)
