"""The execution SDK, as a real separate process (tests/sdk_test_agent.py) on a real nats-server:
the wire contract an orchestrator sees when it sends ExecutionRequests."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest
from conftest import wait_until
from execution_wire import SUBJECTS, Stream, listen, request_for, result_of, run
from nats.aio.client import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sdk_test_agent import KIND, handle
from support.programs import AgentProcess

from orchestrator.codecs.errors import ErrorEnvelope
from orchestrator.codecs.execution_messages import (
    ExecutionCancel,
    ExecutionRequest,
    ExecutionResult,
    Heartbeat,
    InputRequest,
    InputRound,
    ResultStatus,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)
from orchestrator.codecs.wire import WireFormat, decode, encode
from orchestrator.service.agent.sdk import ExecutionService
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry

SERVICE = f"execution-{KIND}"


@pytest.fixture
async def agent(nats_server, tmp_path: Path):
    process = await AgentProcess(nats_server.url, tmp_path / "agent.log").start()
    try:
        yield process
    finally:
        process.stop()


async def service_stats(nc: Client) -> dict:
    reply = await nc.request(f"$SRV.STATS.{SERVICE}", b"", 5)
    return json.loads(reply.data)["endpoints"][0]["data"]


def assert_indexed(stream: Stream, request: ExecutionRequest) -> None:
    assert [p.index for p in stream.parts] == list(range(len(stream.parts)))
    assert {(m.task_id, m.attempt) for m in stream.messages} == {(request.task_id, request.attempt)}


async def test_tokens_at_full_speed_become_few_parts_with_identical_text(nc, agent):
    request = request_for("t-tokens", "tokens 200")
    result, stream = await result_of(nc, request)

    assert result.status is ResultStatus.COMPLETED
    assert result.parts == len(stream.parts)
    assert 2 <= result.parts <= 20
    assert stream.text == "".join(f"w{i} " for i in range(200))
    # The first text goes out alone and at once: it is what the user waits for.
    assert stream.parts[0].content == "w0 "
    assert_indexed(stream, request)


async def test_tool_calls_and_results_keep_their_place_in_the_answer(nc, agent):
    request = request_for("t-tools", "tools")
    result, stream = await result_of(nc, request)

    assert [type(p) for p in stream.parts] == [TextPart, ToolCallPart, ToolResultPart, TextPart]
    call, done = stream.parts[1], stream.parts[2]
    assert (call.call_id, call.name, call.arguments) == ("c1", "search", {"q": "nats"})
    assert (done.call_id, done.content) == ("c1", "3 hits")
    assert stream.text == "Let me look. Found 3."
    assert result.parts == 4
    assert_indexed(stream, request)


async def test_heartbeats_flow_while_the_handler_works_and_end_with_it(nc, agent):
    request = request_for("t-beat", "block", heartbeat=0.1)
    stream = await listen(nc, request)
    await nc.publish(SUBJECTS.execution_run, encode(request), reply=nc.new_inbox())
    await wait_until(lambda: len(stream.heartbeats) >= 3, message="three heartbeats")
    assert [p.content for p in stream.parts] == ["started"]

    await nc.publish(SUBJECTS.execution_cancel, encode(ExecutionCancel(task_id="t-beat")))
    await wait_until(lambda: _stat(nc, "cancelled", 1), message="the attempt to be cancelled")
    beats = await beats_after_marker(nc, stream, request, "m1")
    # Another attempt takes longer than three heartbeat intervals; the cancelled one sent none.
    await result_of(nc, request_for("t-after", "sleep 0.5"))
    assert await beats_after_marker(nc, stream, request, "m2") == beats


async def beats_after_marker(nc: Client, stream: Stream, request, marker: str) -> int:
    """The attempt's heartbeats received before a marker we publish now to the same subject.

    Whatever the service published before its last reply to us reaches this subscription
    before the marker does, so the count cannot grow later for heartbeats sent before now.
    """
    await nc.publish(request.stream_subject, encode(Heartbeat(task_id=marker, attempt=1)))
    await wait_until(
        lambda: any(hb.task_id == marker for hb in stream.heartbeats), message="the marker"
    )
    return sum(hb.task_id == request.task_id for hb in stream.heartbeats)


async def _stat(nc: Client, name: str, value: int) -> bool:
    return (await service_stats(nc))[name] >= value


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        ("fail upstream_unavailable", "503", "upstream_unavailable"),
        ("fail timeout", "504", "timeout"),
        ("fail validation_error", "400", "validation_error"),
        ("fail forbidden", "403", "forbidden"),
        ("crash", "500", "internal"),
    ],
)
async def test_handler_errors_reply_the_envelope_with_micro_headers(
    nc, agent, content, status, code
):
    reply, _ = await run(nc, request_for("t-err", content))
    assert reply.headers["Nats-Service-Error-Code"] == status
    assert reply.headers["Nats-Service-Error"]
    assert decode(reply.data, ErrorEnvelope).error.code == code


async def test_malformed_requests_and_foreign_stream_subjects_are_validation_errors(nc, agent):
    foreign = ExecutionRequest(
        **{**_fields(request_for("t-bad", "echo")), "stream_subject": "nooble4.events.s1"}
    )
    for body in (b'{"task_id": 1}', b"not json", encode(foreign)):
        reply = await nc.request(SUBJECTS.execution_run, body, 5)
        assert reply.headers["Nats-Service-Error-Code"] == "400"
        assert decode(reply.data, ErrorEnvelope).error.code == "validation_error"
    assert (await service_stats(nc))["executions"] == 0


def _fields(request: ExecutionRequest) -> dict:
    return {f: getattr(request, f) for f in request.__struct_fields__}


async def test_a_repeated_attempt_shares_the_running_work_and_its_result(nc, agent):
    request = request_for("t-twin", "sleep 0.5")
    (first, s1), (second, s2) = await asyncio.gather(result_of(nc, request), result_of(nc, request))
    assert first == second
    # After it finished: the remembered result, without running or streaming again.
    again = await nc.request(SUBJECTS.execution_run, encode(request), 10)
    assert decode(again.data, ExecutionResult) == first
    stats = await service_stats(nc)
    assert stats["executions"] == 1
    assert stats["requests"] == 3
    # Both listeners were on the one stream subject: it carried one run's parts, once.
    assert [p.content for p in s1.parts] == [p.content for p in s2.parts] == ["slept"]

    retry, stream = await result_of(nc, request_for("t-twin", "sleep 0.01", attempt=2))
    assert retry.attempt == 2
    assert [p.content for p in stream.parts] == ["slept"]
    assert (await service_stats(nc))["executions"] == 2


async def test_cancel_stops_one_attempt_or_all_and_nothing_is_replied(nc, agent):
    replies = await nc.subscribe(nc.new_inbox())
    first = request_for("t-stop", "block")
    first_stream = await listen(nc, first)
    await nc.publish(SUBJECTS.execution_run, encode(first), reply=replies.subject)
    await wait_until(lambda: first_stream.parts, message="attempt 1 to start")

    # A newer attempt of the task supersedes the older one on this service.
    second = request_for("t-stop", "block", attempt=2)
    second_stream = await listen(nc, second)
    await nc.publish(SUBJECTS.execution_run, encode(second), reply=replies.subject)
    await wait_until(lambda: second_stream.parts, message="attempt 2 to start")
    await wait_until(lambda: _stat(nc, "cancelled", 1), message="attempt 1 to stop")

    cancel = ExecutionCancel(task_id="t-stop", attempt=2)
    await nc.publish(SUBJECTS.execution_cancel, encode(cancel))
    await wait_until(lambda: _stat(nc, "cancelled", 2), message="attempt 2 to stop")
    stats = await service_stats(nc)
    assert (stats["replies"], stats["in_flight"]) == (0, 0)
    assert replies.pending_msgs == 0
    await replies.unsubscribe()


async def test_asking_for_input_ends_the_attempt_and_the_answer_comes_back(nc, agent):
    request = request_for("t-ask", "ask")
    result, stream = await result_of(nc, request)
    assert result.status is ResultStatus.INPUT_REQUIRED
    assert result.input == InputRequest(prompt="Approve the refund?", schema={"type": "boolean"})
    assert result.parts == 1
    assert stream.text == "I need approval. "

    answered = InputRound(request=result.input, response="true")
    later = request_for("t-ask", "ask", attempt=2, inputs=[answered])
    result2, stream2 = await result_of(nc, later)
    assert result2.status is ResultStatus.COMPLETED
    assert result2.input is None
    assert stream2.text == "approved=true"


async def test_the_service_is_discoverable_and_says_where_it_listens(nc, agent):
    ping = json.loads((await nc.request("$SRV.PING", b"", 5)).data)
    assert ping["name"] == SERVICE
    info = json.loads((await nc.request(f"$SRV.INFO.{SERVICE}", b"", 5)).data)
    [endpoint] = info["endpoints"]
    assert endpoint["subject"] == SUBJECTS.execution_run
    assert endpoint["queue_group"] == "execution"
    ready = [line for line in agent.output().splitlines() if "ready on" in line]
    assert len(ready) == 1
    assert SUBJECTS.execution_run in ready[0] and "queue group execution" in ready[0]
    assert SERVICE in ready[0]


async def test_a_msgpack_request_gets_a_msgpack_reply(nc, agent):
    request = request_for("t-pack", "hello")
    reply, stream = await run(nc, request, WireFormat.MSGPACK)
    assert reply.headers["Content-Type"] == WireFormat.MSGPACK.value
    result = decode(reply.data, ExecutionResult, WireFormat.MSGPACK)
    assert (result.task_id, result.parts) == ("t-pack", 1)
    assert stream.text == "echo: hello"


async def test_agent_settings_inject_faults_and_turn_coalescing_off(nc, nats_server, tmp_path):
    process = AgentProcess(
        nats_server.url, tmp_path / "flaky.log", fail_first="1", stream_flush_ms="0"
    )
    await process.start()
    try:
        reply, _ = await run(nc, request_for("t-flaky", "tokens 5"))
        assert reply.headers["Nats-Service-Error-Code"] == "503"
        result, stream = await result_of(nc, request_for("t-flaky", "tokens 5", attempt=2))
    finally:
        process.stop()
    assert result.parts == 5
    assert [p.content for p in stream.parts] == [f"w{i} " for i in range(5)]


async def test_the_served_span_continues_the_callers_trace(nc, nats_server):
    # In-process, to read the service's spans; two connections and tracer providers, as two
    # processes would have: only the NATS headers link them.
    settings = OrchestratorSettings(nats_url=[nats_server.url])
    caller_spans, service_spans = InMemorySpanExporter(), InMemorySpanExporter()
    caller = Telemetry.start(settings, span_exporter=caller_spans)
    served = Telemetry.start(settings, span_exporter=service_spans)
    service_nc = await nats.connect(nats_server.url)
    service = ExecutionService(service_nc, SUBJECTS, KIND, handle, AgentSettings(), served)
    await service.start()
    try:
        request = request_for("t-trace", "hello")
        headers: dict[str, str] = {}
        with caller.client_span("execution.chat.run", headers) as client_span:
            reply = await nc.request(SUBJECTS.execution_run, encode(request), 5, headers=headers)
        assert decode(reply.data, ExecutionResult).parts == 1
        served.force_flush()
        [span] = service_spans.get_finished_spans()
    finally:
        await service.stop(grace=1.0)
        await service_nc.close()
    assert span.kind is SpanKind.SERVER
    assert span.context.trace_id == client_span.get_span_context().trace_id
    assert span.parent.span_id == client_span.get_span_context().span_id
    assert span.attributes["task.id"] == "t-trace"
    assert span.attributes["execution.attempt"] == 1
