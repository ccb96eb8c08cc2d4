"""`orchestrator agent` with `ORCH_AGENT_BACKEND=openai`, as a real process, against a local
process speaking the OpenAI streaming protocol (tests/openai_stub_server.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import aiohttp
import msgspec
import pytest
from conftest import wait_until
from execution_wire import request_for, result_of, run
from support.processes import OrchestratorProcess
from support.programs import StubProcess

from orchestrator.codecs.agent_configs import AgentConfig, ModelParams
from orchestrator.codecs.errors import ErrorEnvelope, UpstreamUnavailable
from orchestrator.codecs.execution_messages import (
    HistoryTurn,
    ResultStatus,
    TextPart,
    ToolCallPart,
    TurnRole,
)
from orchestrator.codecs.wire import decode
from orchestrator.service.agent.openai_backend import OpenAIBackend
from orchestrator.service.runtime.settings import AgentSettings

SERVICE = "execution-openai"
AGENT = AgentConfig(
    tenant_id="t1",
    name="LLM",
    model=ModelParams(
        name="stub-model",
        temperature=0.3,
        max_tokens=77,
        system_prompt="Be brief.",
        extra={"top_p": 0.9},
    ),
)


@pytest.fixture
async def model_server(tmp_path: Path):
    stub = await StubProcess(tmp_path / "model.log").start()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture
async def openai_agent(nats_server, model_server, nc, tmp_path: Path):
    agent = OrchestratorProcess(
        nats_server.url,
        tmp_path / "agent.log",
        ORCH_AGENT_BACKEND="openai",
        ORCH_AGENT_OPENAI_BASE_URL=model_server.url,
        ORCH_AGENT_OPENAI_API_KEY="sk-test-key",
        ORCH_AGENT_OPENAI_READ_TIMEOUT="1",
    ).start("agent")
    try:
        await wait_until(lambda: _answers_ping(nc), timeout=30, message=f"{SERVICE} to answer PING")
        yield agent
    finally:
        agent.stop()


async def _answers_ping(nc) -> bool:
    try:
        reply = await nc.request(f"$SRV.PING.{SERVICE}", b"", 0.5)
    except Exception:  # noqa: BLE001 - no responders or timeout while the process starts
        return False
    return bool(reply.data)


def llm_request(task_id: str, content: str, **changes):
    request = msgspec.structs.replace(request_for(task_id, content, **changes), agent=AGENT)
    return request


async def recorded_requests(model_server: StubProcess) -> list[dict]:
    base = model_server.url.removesuffix("/v1")
    async with aiohttp.ClientSession() as http, http.get(f"{base}/requests") as response:
        return await response.json()


async def test_an_answer_streams_from_the_model_with_config_and_history_mapped(
    nc, openai_agent, model_server
):
    history = [
        HistoryTurn(role=TurnRole.USER, content="My name is Zebulon."),
        HistoryTurn(role=TurnRole.ASSISTANT, content="Hello Zebulon."),
    ]
    request = msgspec.structs.replace(llm_request("t-llm", "What is my name?"), history=history)
    result, stream = await result_of(nc, request)

    assert result.status is ResultStatus.COMPLETED
    assert stream.text == "You said: What is my name?"
    assert all(isinstance(p, TextPart) for p in stream.parts)
    [sent] = await recorded_requests(model_server)
    assert sent["authorization"] == "Bearer sk-test-key"
    body = sent["body"]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("stub-model", 0.3, 77)
    assert (body["stream"], body["top_p"]) == (True, 0.9)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Zebulon."},
        {"role": "assistant", "content": "Hello Zebulon."},
        {"role": "user", "content": "What is my name?"},
    ]


async def test_streamed_tool_call_fragments_become_tool_call_parts(nc, openai_agent):
    request = llm_request("t-tool", "tool")
    result, stream = await result_of(nc, request)

    assert [type(p) for p in stream.parts] == [TextPart, ToolCallPart, ToolCallPart]
    assert stream.parts[0].content == "Checking."
    calls = [(p.call_id, p.name, p.arguments) for p in stream.parts[1:]]
    assert calls == [("call_w", "get_weather", {"city": "Paris"}), ("call_t", "get_time", {})]
    assert result.parts == 3


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        ("status 429", "503", "upstream_unavailable"),
        ("status 500", "503", "upstream_unavailable"),
        ("status 503", "503", "upstream_unavailable"),
        ("broken", "503", "upstream_unavailable"),
        ("stall", "504", "timeout"),
        ("status 400", "400", "validation_error"),
        ("status 401", "403", "forbidden"),
        ("status 404", "404", "not_found"),
    ],
)
async def test_model_server_failures_map_to_retryable_or_final_errors(
    nc, openai_agent, content, status, code
):
    reply, _ = await run(nc, llm_request("t-fail", content))
    assert reply.headers["Nats-Service-Error-Code"] == status
    error = decode(reply.data, ErrorEnvelope).error
    assert error.code == code
    if content.startswith("status"):
        assert f"stub failure {content.split()[1]}" in error.message


async def test_an_unreachable_model_server_is_upstream_unavailable():
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend(AgentSettings(openai_base_url=f"http://127.0.0.1:{port}/v1"))
    try:
        with pytest.raises(UpstreamUnavailable):
            async for _ in backend(llm_request("t-gone", "hello")):
                pass
    finally:
        await backend.close()


def test_history_and_input_rounds_map_to_chat_messages():
    from orchestrator.codecs.execution_messages import InputRequest, InputRound
    from orchestrator.service.agent.openai_backend import chat_body

    asked = InputRound(request=InputRequest(prompt="Refund 20 EUR?"), response="yes")
    body = chat_body(llm_request("t-body", "Refund me", inputs=[asked]))
    assert json.loads(json.dumps(body["messages"]))[-3:] == [
        {"role": "user", "content": "Refund me"},
        {"role": "assistant", "content": "Refund 20 EUR?"},
        {"role": "user", "content": "yes"},
    ]
    assert body["model"] == "stub-model"
    assert chat_body(llm_request("t-body", "hi"), "served-model")["model"] == "served-model"
