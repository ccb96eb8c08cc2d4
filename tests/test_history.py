"""Conversation history: every request carries the session's earlier turns, from durable state,
bounded, across restarts; what failed and cancelled turns leave behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import wait_until
from support.calls import client_of
from support.programs import FlakyAgent
from support.stack import start_stack, stop_stack

from orchestrator.codecs.actions import TaskView
from orchestrator.codecs.execution_messages import HistoryTurn, TurnRole
from orchestrator.codecs.records import TaskStatus
from orchestrator.codecs.session_history import SessionHistory
from orchestrator.service.runtime.nats_server import NatsServer
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.history import HistoryStore
from orchestrator.service.store.kv import KvPolicy, TypedBucket
from orchestrator.service.store.streams import ensure_resources
from orchestrator.subjects import Subjects

USER, ASSISTANT = TurnRole.USER, TurnRole.ASSISTANT


async def answer(stack, session_id: str, content: str) -> str:
    client = client_of(stack)
    sent = await client.send(session_id, content)
    views: list[TaskView] = []

    async def done() -> bool:
        views.append(await client.get_task(sent.task_id))
        return views[-1].status is TaskStatus.COMPLETED

    await wait_until(done, timeout=20, message=f"answer to {content!r}")
    return views[-1].answer


async def test_three_turns_carry_their_history_also_across_an_orchestrator_restart(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    agent = await FlakyAgent(nats_server.url, tmp_path / "agent.log").start()
    stack = await start_stack(nats_server, agent=None)
    try:
        session_id = (await client_of(stack).start_session("demo")).session_id
        first = await answer(stack, session_id, "history My name is Zebulon")
        assert json.loads(first) == []
        second = await answer(stack, session_id, "history What is my name?")
        assert json.loads(second) == [["user", "history My name is Zebulon"], ["assistant", first]]
        await stop_stack(stack)
        stack = await start_stack(nats_server, agent=None)
        third = await answer(stack, session_id, "history And again?")
        assert json.loads(third) == [
            ["user", "history My name is Zebulon"],
            ["assistant", first],
            ["user", "history What is my name?"],
            ["assistant", second],
        ]
    finally:
        agent.stop()
        await stop_stack(stack)


@pytest.fixture
async def history_store(nc):
    def store(**overrides) -> HistoryStore:
        settings = OrchestratorSettings(**overrides)
        return HistoryStore(TypedBucket(bucket, SessionHistory, KvPolicy(16)), settings)

    settings = OrchestratorSettings()
    buckets = await ensure_resources(nc.jetstream(), settings, Subjects())
    bucket = buckets.history
    return store


async def test_failed_turns_leave_the_question_and_cancelled_ones_a_partial_answer(history_store):
    store = history_store()
    await store.record_turn("t", "u", "s", "task1", "hello", "hi there")
    await store.record_turn("t", "u", "s", "task2", "what failed?", None)
    await store.record_turn("t", "u", "s", "task3", "tell me a story", "Once upon", partial=True)
    assert await store.load("t", "u", "s") == [
        HistoryTurn(role=USER, content="hello"),
        HistoryTurn(role=ASSISTANT, content="hi there"),
        HistoryTurn(role=USER, content="what failed?"),
        HistoryTurn(role=USER, content="tell me a story"),
        HistoryTurn(role=ASSISTANT, content="Once upon", partial=True),
    ]
    assert await store.load("t", "u", "other") == []
    assert await store.load("t", "someone-else", "s") == []


async def test_recording_a_task_twice_adds_nothing(history_store):
    store = history_store()
    for _ in range(3):
        await store.record_turn("t", "u", "s", "task1", "hello", "hi")
    assert len(await store.load("t", "u", "s")) == 2


async def test_bounds_keep_the_newest_whole_turns(history_store):
    writer = history_store()
    for i in range(10):
        await writer.record_turn("t", "u", "s", f"task{i}", f"q{i}", "a" * 10)
    by_turns = history_store(history_max_turns=3)
    assert [t.content for t in await by_turns.load("t", "u", "s")] == ["a" * 10, "q9", "a" * 10]
    by_bytes = history_store(history_max_bytes=15)
    assert [t.content for t in await by_bytes.load("t", "u", "s")] == ["q9", "a" * 10]
    assert await history_store(history_max_turns=0).load("t", "u", "s") == []
