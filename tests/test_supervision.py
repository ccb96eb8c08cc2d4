"""No background loop dies silently: failures are logged, loops restarted, readiness told."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from conftest import wait_until
from loguru import logger
from support.calls import call
from support.processes import ready_status
from support.stack import start_stack, stop_stack

from orchestrator.codecs.errors import Unavailable
from orchestrator.service.edge.edge_server import Edge
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.service.store.streams import ensure_resources
from orchestrator.subjects import Subjects


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log record (WARNING and up) of the test, formatted with its traceback."""
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{level} {message}\n{exception}")
    try:
        yield lines
    finally:
        logger.remove(handler)


async def test_sweeper_skips_malformed_keys_with_one_line_and_keeps_closing(nats_server, log_lines):
    stack = await start_stack(nats_server, session_ttl=1.0, session_sweep_interval=0.1)
    try:
        kv = await stack.nc.jetstream().key_value("sessions")
        await kv.put("not-a-session-key", b"{}")
        await kv.put("dev.alice.garbled", b"not json at all")

        def skipped() -> list[str]:
            return [line for line in log_lines if "skipped 2 malformed" in line]

        await wait_until(lambda: skipped(), timeout=10, message="the sweep to skip both keys")
        assert "not-a-session-key" in skipped()[0] and "dev.alice.garbled" in skipped()[0]
        # The positive barrier that the sweeper still runs: a session created after the bad
        # keys were seen is closed by it once past its lifetime.
        sid = (await call(stack.nc, "session.start", {"agent_id": "demo"})).data["session_id"]

        async def closed_in_kv() -> bool:
            return b'"status":"closed"' in (await kv.get(f"dev.alice.{sid}")).value

        await wait_until(closed_in_kv, timeout=15, message="the sweeper to close the session")
        assert not [line for line in log_lines if "background loop" in line]
    finally:
        await stop_stack(stack)


def _settings(**overrides) -> OrchestratorSettings:
    defaults = dict(
        nats_url=["nats://127.0.0.1:1"], edge_port=0,
        loop_restart_backoff_initial=0.01, loop_restart_backoff_max=0.05,
        loop_failure_threshold=3,
    )  # fmt: skip
    return OrchestratorSettings(**{**defaults, **overrides})


async def test_a_failed_loop_is_logged_with_its_traceback_and_restarted(log_lines):
    supervisor = Supervisor(_settings())
    runs: list[int] = []
    finished = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise ValueError(f"bad record number {len(runs)}")
        finished.set()

    task = supervisor.run("flaky-loop", flaky)
    await asyncio.wait_for(finished.wait(), 10)
    await asyncio.wait_for(task, 10)
    failures = [line for line in log_lines if "background loop flaky-loop failed" in line]
    assert len(failures) == 2
    assert "Traceback" in failures[0] and "ValueError: bad record number 1" in failures[0]
    assert supervisor.failing() == {}  # it returned normally on its third run


async def test_a_periodic_job_survives_transient_errors_and_restarts_after_others(log_lines):
    supervisor = Supervisor(_settings())
    passes: list[str] = []
    fourth = asyncio.Event()
    outcomes = [Unavailable("nats away"), RuntimeError("a bug"), None, None]

    async def tick() -> None:
        outcome = outcomes[len(passes)]
        passes.append(type(outcome).__name__)
        if len(passes) == 4:
            fourth.set()
        if outcome is not None:
            raise outcome

    task = supervisor.every("periodic-job", 0.01, tick)
    try:
        await asyncio.wait_for(fourth.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert passes == ["Unavailable", "RuntimeError", "NoneType", "NoneType"]
    transient = [line for line in log_lines if line.startswith("WARNING periodic periodic-job")]
    assert len(transient) == 1 and "nats away" in transient[0] and "Traceback" not in transient[0]
    failed = [line for line in log_lines if line.startswith("ERROR background loop periodic-job")]
    assert len(failed) == 1 and "RuntimeError: a bug" in failed[0] and "Traceback" in failed[0]


async def test_a_periodic_job_stops_even_when_a_pass_swallowed_its_cancel():
    supervisor = Supervisor(_settings())
    passes: list[int] = []
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        passes.append(len(passes))
        if len(passes) > 1:
            return
        reply = loop.create_future()

        def reply_arrives_as_the_job_is_stopped() -> None:
            reply.set_result(b"reply")
            task.cancel()

        loop.call_soon(reply_arrives_as_the_job_is_stopped)
        # As a nats-py request waits for its reply: Python 3.11 returns the result, cancel lost.
        await asyncio.wait_for(reply, 10)

    task = supervisor.every("periodic-job", 0.01, tick)
    try:
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
    finally:
        task.cancel()
    assert task.cancelled() and passes == [0]


async def test_stop_ends_a_loop_that_swallowed_its_first_cancel():
    supervisor = Supervisor(_settings())
    cancels_seen: list[int] = []
    running = asyncio.Event()

    async def stubborn() -> None:
        for _ in range(1000):
            running.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancels_seen.append(1)
                if len(cancels_seen) == 1:
                    continue  # as a lost cancel would: the loop goes on
                raise

    task = supervisor.run("stubborn", stubborn)
    await asyncio.wait_for(running.wait(), 10)
    await asyncio.wait_for(supervisor.stop(), 10)
    assert task.cancelled() and len(cancels_seen) == 2


async def test_a_loop_that_keeps_failing_makes_readiness_fail_and_names_it(stack, log_lines):
    settings = _settings(nats_url=[stack.url])
    supervisor = Supervisor(settings)
    edge = Edge(settings, stack.nc, Subjects(), supervisor=supervisor)
    await edge.start()
    failures = 0

    async def broken() -> None:
        nonlocal failures
        failures += 1
        raise RuntimeError("always broken")

    try:
        async with aiohttp.ClientSession() as http:
            assert await ready_status(http, edge.url) == 200
            task = supervisor.run("broken-loop", broken)
            await wait_until(lambda: failures >= 3, timeout=10, message="three failures")
            async with http.get(f"{edge.url}/health/ready") as resp:
                assert resp.status == 503
                body = await resp.json()
            assert "broken-loop" in body["error"]["message"]
            assert body["error"]["details"]["failing_loops"] == {
                "broken-loop": "RuntimeError: always broken"
            }
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await edge.stop()


async def test_the_worker_loop_fails_when_its_stream_is_deleted_and_restarts_with_full_capacity(
    nats_server, log_lines
):
    # Answers that take far longer than the test: turns stay running until the stack stops.
    stack = await start_stack(
        nats_server, agent=AgentSettings(chunk_delay=0.0, delay=120.0),
        task_concurrency=3, task_fetch_batch=16, execution_timeout=300.0,
        loop_restart_backoff_initial=0.05, loop_restart_backoff_max=0.2,
        pull_bind_attempts=2, pull_bind_backoff_initial=0.05,
    )  # fmt: skip
    worker, supervisor = stack.orchestrator.worker, stack.orchestrator.supervisor
    js = stack.nc.jetstream()
    try:
        assert worker.capacity == 3
        await js.delete_stream(stack.settings.work_stream)
        # Its pulls go unanswered, and its consumer cannot be made again: the loop fails, is
        # restarted (again and again), and readiness names it.
        await wait_until(
            lambda: "task-worker" in supervisor.failing(), timeout=20,
            message=lambda: f"the worker loop failing, got {supervisor.failing()}",
        )  # fmt: skip
        failures = [line for line in log_lines if "background loop task-worker failed" in line]
        assert failures and "Traceback" in failures[0], log_lines[-5:]

        # The stream is back (as the next instance to start makes it): a restart binds the loop
        # to a new consumer, which runs as many turns at once as before: none of its slots was
        # lost with the failed runs.
        await ensure_resources(js, stack.settings, stack.subjects)
        for content in ("one", "two", "three"):  # one turn in each of three sessions
            started = await call(stack.nc, "session.start", {"agent_id": "demo"})
            sid = started.data["session_id"]
            sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": content})
            assert sent.error is None, sent.data
        await wait_until(
            lambda: worker.running == worker.capacity, timeout=30,
            message=lambda: f"{worker.capacity} turns running at once, got {worker.running}",
        )  # fmt: skip
    finally:
        await stop_stack(stack)
