"""The reference execution service streams chunk events once per task and answers by contract."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from harness import execution_request, running_agent
from nats.js.errors import NotFoundError

from orchestrator.codecs.agent_configs import AgentConfig
from orchestrator.codecs.errors import ErrorEnvelope
from orchestrator.codecs.events import ChatChunk, SessionEvent
from orchestrator.codecs.execution_messages import ExecutionResult
from orchestrator.codecs.wire import WireFormat, decode, encode
from orchestrator.service.agent.demo_answer import split_answer
from orchestrator.service.execution.execution_client import ExecutionClient
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.streams import ensure_resources
from orchestrator.subjects import Subjects

from .conftest import wait_until

SUBJECTS = Subjects()
FAST = OrchestratorSettings(
    execution_timeout=2.0,
    execution_max_retries=2,
    execution_backoff_initial=0.01,
    execution_backoff_max=0.05,
)


async def stored_chunks(js, task_id: str, session_id: str = "s1") -> list[tuple[ChatChunk, str]]:
    """Every chunk event of `task_id` in the events stream, in stream order, with its Msg-Id."""
    found: list[tuple[ChatChunk, str]] = []
    seq = 1
    for _ in range(10_000):
        try:
            msg = await js.get_msg(
                FAST.events_stream, seq=seq, subject=SUBJECTS.session_events(session_id), next=True
            )
        except NotFoundError:
            return found
        seq = msg.seq + 1
        event = decode(msg.data, SessionEvent)
        if isinstance(event, ChatChunk) and event.task_id == task_id:
            found.append((event, (msg.headers or {}).get("Nats-Msg-Id", "")))
    raise AssertionError("events stream did not end")


@pytest.fixture
async def js(nc):
    js = nc.jetstream()
    await ensure_resources(js, FAST, SUBJECTS)
    return js


async def test_answer_is_streamed_as_ordered_chunks_before_the_reply(nc, js):
    async with running_agent(nc, chunks=4, chunk_delay=0.01) as agent:
        result = await ExecutionClient(nc, SUBJECTS, FAST).run(
            lambda n: execution_request("t-happy", n)
        )

    assert result.content == "[Echo] You said: hello there"
    assert result.chunks == 4
    chunks = await stored_chunks(js, "t-happy")
    assert [c.index for c, _ in chunks] == [0, 1, 2, 3]
    assert [msg_id for _, msg_id in chunks] == [f"t-happy.chunk.{i}" for i in range(4)]
    assert "".join(c.content for c, _ in chunks) == result.content
    assert agent.stats.replies == 1


async def test_unnamed_agent_answers_with_its_id_and_short_answers_get_fewer_chunks(nc, js):
    request = msgspec.structs.replace(
        execution_request("t-short"), agent=AgentConfig(tenant_id="t1"), content="x"
    )
    answer = "[echo] You said: x"
    assert split_answer(answer, 1000) == list(answer)
    assert split_answer("", 3) == [""]
    async with running_agent(nc, chunks=3):
        reply = await nc.request(SUBJECTS.execution_run, encode(request), timeout=2)
    assert decode(reply.data, ExecutionResult) == ExecutionResult(
        task_id="t-short", content=answer, chunks=3
    )


async def test_retry_of_a_finished_task_gets_the_same_answer_without_streaming_again(nc, js):
    client = ExecutionClient(nc, SUBJECTS, FAST)
    async with running_agent(nc, chunks=3) as agent:
        first = await client.run(lambda n: execution_request("t-again", n))
        second = await client.run(lambda n: execution_request("t-again", n + 1))
        assert agent.executions == 1
    assert second == first
    assert len(await stored_chunks(js, "t-again")) == 3


async def test_another_instance_rerunning_a_task_stores_no_chunk_twice(nc, js):
    client = ExecutionClient(nc, SUBJECTS, FAST)
    async with running_agent(nc, chunks=3):
        first = await client.run(lambda n: execution_request("t-moved", n))
    # A fresh instance remembers nothing: it streams again, and the stream drops the duplicates.
    async with running_agent(nc, chunks=3) as other:
        second = await client.run(lambda n: execution_request("t-moved", n + 1))
        assert other.executions == 1
    assert second == first
    assert [c.index for c, _ in await stored_chunks(js, "t-moved")] == [0, 1, 2]


async def test_concurrent_duplicate_requests_share_one_execution(nc, js):
    client = ExecutionClient(nc, SUBJECTS, FAST)
    async with running_agent(nc, chunks=2, delay=0.3) as agent:
        results = await asyncio.gather(
            *(client.run(lambda n: execution_request("t-twin", n)) for _ in range(3))
        )
        assert agent.stats.requests == 3
        assert agent.executions == 1
    assert results[0] == results[1] == results[2]
    assert len(await stored_chunks(js, "t-twin")) == 2


async def test_malformed_request_gets_a_validation_error_with_micro_headers(nc, js):
    async with running_agent(nc) as agent:
        reply = await nc.request(SUBJECTS.execution_run, b'{"task_id": 1}', timeout=2)
        wrong_subject = msgspec.structs.replace(execution_request("t-bad"), events_subject="x.y")
        reply2 = await nc.request(SUBJECTS.execution_run, encode(wrong_subject), timeout=2)
        assert agent.executions == 0
    for r in (reply, reply2):
        assert r.headers["Nats-Service-Error-Code"] == "400"
        assert r.headers["Nats-Service-Error"]
        assert decode(r.data, ErrorEnvelope).error.code == "validation_error"


async def test_msgpack_request_gets_a_msgpack_reply(nc, js):
    headers = {"Content-Type": WireFormat.MSGPACK.value}
    async with running_agent(nc, chunks=2):
        reply = await nc.request(
            SUBJECTS.execution_run,
            encode(execution_request("t-pack"), WireFormat.MSGPACK),
            timeout=2,
            headers=headers,
        )
    assert reply.headers["Content-Type"] == WireFormat.MSGPACK.value
    result = decode(reply.data, ExecutionResult, WireFormat.MSGPACK)
    assert result.content == "[Echo] You said: hello there"


async def test_cancel_stops_streaming_and_sends_no_reply(nc, js):
    client = ExecutionClient(nc, SUBJECTS, FAST)
    async with running_agent(nc, chunks=20, chunk_delay=0.1) as agent:
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        await nc.publish(SUBJECTS.execution_run, encode(execution_request("t-stop")), reply=inbox)
        await wait_until(lambda: _has_chunks(js, "t-stop"), timeout=5, message="streaming to begin")
        await client.cancel("t-stop")
        await wait_until(lambda: agent.stats.cancelled == 1, timeout=5, message="cancel")
        # The work task has ended, so nothing more can be stored or replied.
        stored = await stored_chunks(js, "t-stop")
        assert 0 < len(stored) < 20
        assert replies.pending_msgs == 0
        await replies.unsubscribe()


async def _has_chunks(js, task_id: str) -> bool:
    return bool(await stored_chunks(js, task_id))
