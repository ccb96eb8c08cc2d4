"""The execution client: per-attempt timeouts, bounded retries with backoff, typed final errors."""

from __future__ import annotations

import asyncio
import random

import pytest
from harness import execution_request, running_agent

from orchestrator.codecs.errors import (
    ActionTimeout,
    NotFound,
    OrchestratorError,
    UpstreamUnavailable,
    ValidationFailed,
)
from orchestrator.codecs.execution_messages import ExecutionRequest
from orchestrator.codecs.wire import decode
from orchestrator.service.execution.execution_client import ExecutionClient, backoff_delay
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.streams import ensure_resources
from orchestrator.subjects import Subjects

from .conftest import wait_until

SUBJECTS = Subjects()


def fast(**overrides) -> OrchestratorSettings:
    values = {
        "execution_timeout": 0.3,
        "execution_max_retries": 2,
        "execution_backoff_initial": 0.01,
        "execution_backoff_max": 0.05,
        **overrides,
    }
    return OrchestratorSettings(**values)


def factory(task_id: str, events_subject: str | None = None):
    sent: list[int] = []

    def build(attempt: int) -> ExecutionRequest:
        sent.append(attempt)
        return execution_request(task_id, attempt, "hi", events_subject)

    build.sent = sent
    return build


class Retries:
    """An `on_retry` hook that records what it was told."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, OrchestratorError]] = []

    async def __call__(self, attempt: int, error: OrchestratorError) -> None:
        self.seen.append((attempt, error))


@pytest.fixture
async def js(nc):
    js = nc.jetstream()
    await ensure_resources(js, fast(), SUBJECTS)
    return js


async def test_slow_attempt_times_out_and_a_retry_gets_the_answer(nc, js):
    retries = Retries()
    build = factory("t-slow")
    client = ExecutionClient(nc, SUBJECTS, fast(execution_max_retries=4))
    async with running_agent(nc, delay=0.5) as agent:
        result = await client.run(build, on_retry=retries)
        assert agent.executions == 1
    assert result.content == "[Echo] You said: hi"
    assert isinstance(retries.seen[0][1], ActionTimeout)
    assert build.sent == [1, *(attempt for attempt, _ in retries.seen)]


async def test_flaky_agent_succeeds_on_the_third_attempt(nc, js):
    retries = Retries()
    build = factory("t-flaky")
    async with running_agent(nc, fail_first=2) as agent:
        result = await ExecutionClient(nc, SUBJECTS, fast()).run(build, on_retry=retries)
        assert agent.stats.requests == 3
    assert result.content == "[Echo] You said: hi"
    assert build.sent == [1, 2, 3]
    assert [attempt for attempt, _ in retries.seen] == [2, 3]
    assert all(type(error) is UpstreamUnavailable for _, error in retries.seen)


async def test_always_failing_agent_gets_bounded_attempts_then_the_typed_error(nc, js):
    build = factory("t-broken")
    async with running_agent(nc, fail_always=True) as agent:
        with pytest.raises(UpstreamUnavailable, match="injected failure of attempt 3"):
            await ExecutionClient(nc, SUBJECTS, fast(execution_max_retries=2)).run(build)
        assert agent.stats.requests == 3
        assert agent.executions == 0


async def test_no_execution_service_is_upstream_unavailable_after_bounded_attempts(nc, js):
    retries = Retries()
    build = factory("t-alone")
    with pytest.raises(UpstreamUnavailable, match="no execution service is answering") as info:
        await ExecutionClient(nc, SUBJECTS, fast(execution_max_retries=3)).run(
            build, on_retry=retries
        )
    assert build.sent == [1, 2, 3, 4]
    assert [attempt for attempt, _ in retries.seen] == [2, 3, 4]
    assert info.value.details == {"task_id": "t-alone", "attempts": 4}


async def test_timeout_of_every_attempt_is_action_timeout(nc, js):
    build = factory("t-stuck")
    async with running_agent(nc, delay=30) as agent:
        with pytest.raises(ActionTimeout):
            await ExecutionClient(nc, SUBJECTS, fast(execution_max_retries=1)).run(build)
        assert agent.stats.requests == 2
    assert build.sent == [1, 2]


async def test_validation_error_is_not_retried(nc, js):
    retries = Retries()
    build = factory("t-invalid", events_subject="nooble4.somewhere.else")
    async with running_agent(nc) as agent:
        with pytest.raises(ValidationFailed):
            await ExecutionClient(nc, SUBJECTS, fast()).run(build, on_retry=retries)
        assert agent.stats.requests == 1
    assert retries.seen == []


async def test_micro_error_without_envelope_is_rebuilt_from_its_status_and_not_retried(nc):
    requests: list[str] = []

    async def bare_micro_service(msg):
        requests.append(decode(msg.data, ExecutionRequest).task_id)
        headers = {"Nats-Service-Error": "no such agent", "Nats-Service-Error-Code": "404"}
        await nc.publish(msg.reply, b"", headers=headers)

    sub = await nc.subscribe(SUBJECTS.execution_run, cb=bare_micro_service)
    try:
        with pytest.raises(NotFound, match="no such agent"):
            await ExecutionClient(nc, SUBJECTS, fast()).run(factory("t-micro"))
    finally:
        await sub.unsubscribe()
    assert requests == ["t-micro"]


async def test_cancelling_the_caller_stops_waiting_at_once(nc, js):
    client = ExecutionClient(nc, SUBJECTS, fast(execution_timeout=30))
    async with running_agent(nc, delay=30) as agent:
        running = asyncio.create_task(client.run(factory("t-abandon")))
        await wait_until(lambda: agent.stats.requests == 1, timeout=5, message="request")
        running.cancel()
        done, _ = await asyncio.wait({running}, timeout=2)
        assert running in done and running.cancelled()
        await client.cancel("t-abandon")
        await wait_until(lambda: agent.stats.cancelled == 1, timeout=5, message="agent cancel")


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    settings = fast(
        execution_backoff_initial=0.1, execution_backoff_multiplier=2, execution_backoff_max=0.5
    )
    rng = random.Random(7)
    for retry, full in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (10, 0.5)]:
        delays = [backoff_delay(retry, settings, rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1
