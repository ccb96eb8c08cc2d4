"""The execution client: attempts, per-attempt timeouts, bounded retries with backoff, cancel,
and the outcome it hands the worker (text = the final attempt's stored chunks)."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from conftest import wait_until
from support.stack import running_agent

from orchestrator.codecs.actions import GetTask
from orchestrator.codecs.agent_configs import AgentConfig
from orchestrator.codecs.errors import NotFound, OrchestratorError, UpstreamUnavailable
from orchestrator.codecs.events import ChatChunk, TaskStatusChanged
from orchestrator.codecs.execution_messages import ExecutionRequest
from orchestrator.codecs.records import ChatTask
from orchestrator.codecs.wire import decode
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.edge.bus import BusClient
from orchestrator.service.execution.execution_client import (
    ExecutionClient,
    OutcomeStatus,
    backoff_delay,
)
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.event_log import EventLog
from orchestrator.service.store.ids import utcnow
from orchestrator.service.store.streams import ensure_resources
from orchestrator.subjects import Subjects

SUBJECTS = Subjects()
ECHO = AgentConfig(tenant_id="t1", name="Echo")


def fast(**overrides) -> OrchestratorSettings:
    values = {
        "execution_timeout": 0.5,
        "execution_max_retries": 2,
        "execution_backoff_initial": 0.01,
        "execution_backoff_max": 0.05,
        "execution_heartbeat_interval": 0.1,
        "execution_heartbeat_timeout": 5.0,
        **overrides,
    }
    return OrchestratorSettings(**values)


def chat_task(task_id: str, content: str = "hi") -> ChatTask:
    now = utcnow()
    return ChatTask(
        task_id=task_id, session_id="s1", tenant_id="t1", user_id="u1", agent_id="echo",
        content=content, created_at=now, updated_at=now,
    )  # fmt: skip


@pytest.fixture
async def events(nc) -> EventLog:
    js = nc.jetstream()
    await ensure_resources(js, fast(), SUBJECTS)
    return EventLog(js, SUBJECTS, fast())


def client(nc, events: EventLog, **overrides) -> ExecutionClient:
    return ExecutionClient(Wiring.build(nc, fast(**overrides)), events)


async def stored(events: EventLog, task_id: str) -> list:
    page = await events.read("s1", 0, 1000)
    return [r.event for r in page.events if r.event.task_id == task_id]


async def test_an_answer_is_the_text_of_its_stored_chunks(nc, events):
    async with running_agent(nc, chunks=4, chunk_delay=0.01):
        outcome = await client(nc, events).run(chat_task("t-happy"), ECHO)
    assert outcome.status is OutcomeStatus.COMPLETED and outcome.attempt == 1
    assert outcome.text == "[Echo] You said: hi"
    log = await stored(events, "t-happy")
    assert isinstance(log[0], TaskStatusChanged) and log[0].attempt == 1
    chunks = [e for e in log if isinstance(e, ChatChunk)]
    assert "".join(c.content for c in chunks) == outcome.text
    assert {c.attempt for c in chunks} == {1}


async def test_flaky_agent_succeeds_on_the_third_attempt_each_announced(nc, events):
    async with running_agent(nc, fail_first=2) as agent:
        outcome = await client(nc, events).run(chat_task("t-flaky"), ECHO)
        assert agent.stats.requests == 3
    assert (outcome.status, outcome.attempt) == (OutcomeStatus.COMPLETED, 3)
    log = await stored(events, "t-flaky")
    running = [e.attempt for e in log if isinstance(e, TaskStatusChanged)]
    assert running == [1, 2, 3]


async def test_a_later_delivery_numbers_its_attempts_after_the_earlier_ones(nc, events):
    execution = client(nc, events)
    assert [execution.first_attempt(d) for d in (1, 2, 3)] == [1, 4, 7]
    async with running_agent(nc):
        outcome = await execution.run(chat_task("t-again"), ECHO, first_attempt=4)
    assert outcome.attempt == 4
    assert {e.attempt for e in await stored(events, "t-again")} == {4}


async def test_always_failing_agent_gets_bounded_attempts_then_the_typed_error(nc, events):
    async with running_agent(nc, fail_always=True) as agent:
        outcome = await client(nc, events).run(chat_task("t-broken"), ECHO)
        assert agent.stats.requests == 3
    assert outcome.status is OutcomeStatus.FAILED
    assert isinstance(outcome.error, UpstreamUnavailable)
    assert "injected failure of attempt 3" in outcome.error.message


async def test_no_execution_service_is_upstream_unavailable_after_bounded_attempts(nc, events):
    outcome = await client(nc, events, execution_max_retries=3).run(chat_task("t-alone"), ECHO)
    assert outcome.status is OutcomeStatus.FAILED and outcome.attempt == 4
    assert isinstance(outcome.error, UpstreamUnavailable)
    assert outcome.error.details == {"task_id": "t-alone", "attempts": 4}


async def test_timeout_of_every_attempt_is_timed_out(nc, events):
    async with running_agent(nc, delay=30) as agent:
        outcome = await client(nc, events, execution_max_retries=1).run(chat_task("t-stuck"), ECHO)
        assert agent.stats.requests == 2
    assert outcome.status is OutcomeStatus.TIMED_OUT
    assert outcome.error is not None and outcome.error.code == "timeout"


async def test_micro_error_without_envelope_is_rebuilt_from_its_status_and_not_retried(nc, events):
    requests: list[str] = []

    async def bare_micro_service(msg):
        requests.append(decode(msg.data, ExecutionRequest).task_id)
        headers = {"Nats-Service-Error": "no such agent", "Nats-Service-Error-Code": "404"}
        await nc.publish(msg.reply, b"", headers=headers)

    sub = await nc.subscribe(SUBJECTS.execution_run, cb=bare_micro_service)
    try:
        outcome = await client(nc, events).run(chat_task("t-micro"), ECHO)
    finally:
        await sub.unsubscribe()
    assert requests == ["t-micro"]
    assert outcome.status is OutcomeStatus.FAILED and isinstance(outcome.error, NotFound)
    assert outcome.error.message == "no such agent"


async def test_a_bare_503_reads_the_same_to_the_execution_client_and_the_edge(nc, events):
    headers = {"Nats-Service-Error": "overloaded", "Nats-Service-Error-Code": "503"}

    async def bare_micro_service(msg):
        await nc.publish(msg.reply, b"", headers=headers)

    subs = [
        await nc.subscribe(SUBJECTS.execution_run, cb=bare_micro_service),
        await nc.subscribe(SUBJECTS.action("task.get"), cb=bare_micro_service),
    ]
    try:
        outcome = await client(nc, events, execution_max_retries=0).run(chat_task("t-503"), ECHO)
        bus = BusClient.for_edge(nc, SUBJECTS, fast(edge_action_timeout=10))
        with pytest.raises(OrchestratorError) as raised:
            await bus.call("task.get", ExecutionContext("t1", "u1"), GetTask(task_id="t-503"))
    finally:
        for sub in subs:
            await sub.unsubscribe()
    assert outcome.status is OutcomeStatus.FAILED and outcome.error is not None
    assert outcome.error.code == raised.value.code == "upstream_unavailable"
    assert outcome.error.message == raised.value.message == "overloaded"


async def test_an_execution_service_sees_the_agents_name_and_model_never_its_webhook(nc, events):
    received: list[dict] = []

    async def recording_service(msg):
        received.append(json.loads(msg.data))
        await nc.publish(msg.reply, b"", headers={"Nats-Service-Error-Code": "404"})

    agent = AgentConfig(
        tenant_id="t1", name="Hooked", users=["u1"], webhook_url="https://hooks.example/secret",
    )  # fmt: skip
    sub = await nc.subscribe(SUBJECTS.execution_run, cb=recording_service)
    try:
        await client(nc, events).run(chat_task("t-hook"), agent)
    finally:
        await sub.unsubscribe()
    assert len(received) == 1
    assert set(received[0]["agent"]) == {"name", "model"}
    assert received[0]["agent"]["name"] == "Hooked"
    assert "hooks.example" not in json.dumps(received[0])


async def test_cancel_tells_the_agent_and_returns_the_partial_text(nc, events):
    execution = client(nc, events, execution_timeout=30)
    cancel = asyncio.Event()
    async with running_agent(nc, chunks=40, chunk_delay=0.1) as agent:
        running = asyncio.create_task(execution.run(chat_task("t-stop"), ECHO, cancel=cancel))

        async def streaming() -> bool:
            return any(isinstance(e, ChatChunk) for e in await stored(events, "t-stop"))

        await wait_until(streaming, timeout=5, message="streaming to begin")
        cancel.set()
        outcome = await asyncio.wait_for(running, 5)
        await wait_until(lambda: agent.stats.cancelled == 1, timeout=5, message="agent cancel")
    assert outcome.status is OutcomeStatus.CANCELLED
    chunks = [e for e in await stored(events, "t-stop") if isinstance(e, ChatChunk)]
    assert outcome.text == "".join(c.content for c in chunks)
    assert outcome.text and "[Echo] You said: hi".startswith(outcome.text)
    assert outcome.text != "[Echo] You said: hi"


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    settings = fast(
        execution_backoff_initial=0.1, execution_backoff_multiplier=2, execution_backoff_max=0.5
    )
    rng = random.Random(7)
    for retry, full in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (10, 0.5)]:
        delays = [backoff_delay(retry, settings, rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1
