"""The reference (demo) agent on the SDK: its answer streamed as parts to the attempt's stream
subject, its faults, and both codecs."""

from __future__ import annotations

import msgspec
from conftest import wait_until
from support.stack import execution_request, running_agent

from orchestrator.codecs.errors import ErrorEnvelope
from orchestrator.codecs.execution_messages import (
    ExecutionAgent,
    ExecutionResult,
    Heartbeat,
    StreamMessage,
    TextPart,
)
from orchestrator.codecs.wire import WireFormat, decode, encode
from orchestrator.service.agent.demo_answer import answer_for, split_answer
from orchestrator.subjects import Subjects

SUBJECTS = Subjects()


async def test_answer_is_streamed_as_indexed_parts_before_the_reply(nc):
    request = execution_request("t-happy")
    parts: list[TextPart] = []

    async def collect(msg) -> None:
        message = decode(msg.data, StreamMessage)
        if not isinstance(message, Heartbeat):
            parts.append(message)

    await nc.subscribe(request.stream_subject, cb=collect)
    async with running_agent(nc, chunks=4, chunk_delay=0.05) as agent:
        reply = await nc.request(SUBJECTS.execution_run, encode(request), timeout=5)
        result = decode(reply.data, ExecutionResult)
        await wait_until(lambda: len(parts) == result.parts, message="every counted part")
        assert agent.stats.replies == 1
    assert (result.task_id, result.attempt, result.status) == ("t-happy", 1, "completed")
    assert [p.index for p in parts] == list(range(result.parts))
    assert {(p.task_id, p.attempt) for p in parts} == {("t-happy", 1)}
    assert "".join(p.content for p in parts) == "[Echo] You said: hello there"


def test_unnamed_agents_answer_with_their_id_and_short_answers_get_fewer_pieces():
    request = msgspec.structs.replace(
        execution_request("t-short"), agent=ExecutionAgent(), content="x"
    )
    answer = answer_for(request)
    assert answer == "[echo] You said: x"
    assert split_answer(answer, 1000) == list(answer)
    assert split_answer("", 3) == [""]


async def test_first_attempts_fail_as_configured_with_micro_error_headers(nc):
    async with running_agent(nc, fail_first=1) as agent:
        first = await nc.request(
            SUBJECTS.execution_run, encode(execution_request("t-flaky", 1)), timeout=5
        )
        second = await nc.request(
            SUBJECTS.execution_run, encode(execution_request("t-flaky", 2)), timeout=5
        )
        assert agent.stats.requests == 2
    assert first.headers["Nats-Service-Error-Code"] == "503"
    assert decode(first.data, ErrorEnvelope).error.code == "upstream_unavailable"
    assert decode(second.data, ExecutionResult).attempt == 2


async def test_msgpack_request_gets_a_msgpack_reply(nc):
    headers = {"Content-Type": WireFormat.MSGPACK.value}
    async with running_agent(nc, chunks=2):
        reply = await nc.request(
            SUBJECTS.execution_run,
            encode(execution_request("t-pack"), WireFormat.MSGPACK),
            timeout=5,
            headers=headers,
        )
    assert reply.headers["Content-Type"] == WireFormat.MSGPACK.value
    result = decode(reply.data, ExecutionResult, WireFormat.MSGPACK)
    assert result.task_id == "t-pack" and result.parts >= 1
