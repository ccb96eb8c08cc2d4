"""Nothing is lost when processes die: kill -9 of orchestrators, restarts of the nats-server."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from conftest import wait_until
from support.calls import call, put_agent, wait_for_service
from support.chat_load import assert_final_attempt_is_the_answer
from support.processes import OrchestratorProcess

from orchestrator.codecs.agent_configs import AgentConfig
from orchestrator.service.agent.reference_agent import ReferenceAgent
from orchestrator.service.runtime.settings import AgentSettings
from orchestrator.service.store.kv import matching_keys
from orchestrator.subjects import Subjects


@pytest.fixture
async def bus(nats_server):
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield nc
    await nc.close()


@pytest.fixture
def processes(tmp_path):
    started: list[OrchestratorProcess] = []

    def spawn(url: str, name: str, **env: str) -> OrchestratorProcess:
        proc = OrchestratorProcess(url, tmp_path / f"{name}.log", **env).start()
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.kill()


async def seed(nc) -> None:
    async def ready() -> bool:
        try:
            await put_agent(nc, "demo", AgentConfig(tenant_id="dev"))
        except (nats.errors.Error, nats.js.errors.APIError):
            return False
        return True

    await wait_until(ready, timeout=15, message="agent_configs bucket")


async def test_sessions_survive_kill_9_of_the_orchestrator(nats_server, bus, processes):
    first = processes(nats_server.url, "first")
    await wait_for_service(bus)
    await seed(bus)
    sids = []
    for _ in range(5):
        reply = await call(bus, "session.start", {"agent_id": "demo"})
        sids.append(reply.data["session_id"])
    first.kill()

    processes(nats_server.url, "second")
    await wait_for_service(bus)
    for sid in sids:
        reply = await call(bus, "session.get", {"session_id": sid})
        assert reply.data["status"] == "open"
    listed = await call(bus, "session.list", {"limit": 10})
    assert sorted(s["session_id"] for s in listed.data["items"]) == sorted(sids)


async def test_sessions_survive_a_nats_server_restart(stack):
    reply = await call(stack.nc, "session.start", {"agent_id": "demo"})
    sid = reply.data["session_id"]
    stack.server.restart()

    async def readable() -> bool:
        try:
            got = await call(stack.nc, "session.get", {"session_id": sid}, timeout=1)
        except nats.errors.Error:
            return False
        return got.data.get("status") == "open"

    await wait_until(readable, timeout=15, message="session readable after restart")


async def test_two_instances_share_the_load_and_process_each_action_once(
    nats_server, bus, processes
):
    processes(nats_server.url, "a")
    processes(nats_server.url, "b")
    await wait_for_service(bus, count=2)
    await seed(bus)
    # One user per start: 40 starts of one user would pass the per-user quota (20) only by
    # racing its check, and fail with `conflict` when some finish before others check.
    replies = await asyncio.gather(
        *(call(bus, "session.start", {"agent_id": "demo"}, user=f"u{i}") for i in range(40))
    )
    assert [r.error for r in replies if r.error] == []
    kv = await bus.jetstream().key_value("sessions")
    assert len(await matching_keys(kv)) == 40

    inbox = bus.new_inbox()
    sub = await bus.subscribe(inbox)
    await bus.publish("$SRV.STATS.orchestrator", b"", reply=inbox)
    per_instance = []
    for _ in range(2):
        stats = json.loads((await sub.next_msg(timeout=10)).data)
        ep = next(e for e in stats["endpoints"] if e["name"] == "session-start")
        per_instance.append(ep["num_requests"])
    assert sum(per_instance) == 40
    assert all(n > 0 for n in per_instance), per_instance


async def test_concurrent_updates_of_one_session_from_two_instances_lose_nothing(
    nats_server, bus, processes
):
    processes(nats_server.url, "a")
    processes(nats_server.url, "b")
    await wait_for_service(bus, count=2)
    await seed(bus)
    sid = (await call(bus, "session.start", {"agent_id": "demo"})).data["session_id"]
    updates = await asyncio.gather(
        *(
            call(bus, "session.update", {"session_id": sid, "metadata": {f"k{i}": str(i)}})
            for i in range(24)
        )
    )
    assert all(u.error is None for u in updates), [u.data for u in updates if u.error]
    final = await call(bus, "session.get", {"session_id": sid})
    assert final.data["metadata"] == {f"k{i}": str(i) for i in range(24)}


async def test_kill_9_while_tasks_run_leaves_no_task_stuck_or_answered_twice(
    nats_server, bus, processes
):
    doomed = processes(nats_server.url, "doomed")
    await wait_for_service(bus)
    await seed(bus)
    agent = ReferenceAgent(bus, Subjects(), AgentSettings(chunks=6, chunk_delay=0.25))
    await agent.start()
    try:
        starts = [
            await call(bus, "session.start", {"agent_id": "demo"}, user=f"u{i}") for i in range(6)
        ]
        sessions = [s.data["session_id"] for s in starts]
        accepted = []
        for i, sid in enumerate(sessions):
            sent = await call(
                bus, "chat.send", {"session_id": sid, "content": f"msg {i}"}, user=f"u{i}"
            )
            assert sent.error is None, sent.data
            accepted.append((f"u{i}", sid, sent.data["task_id"]))

        async def some_running() -> bool:
            reply = await call(bus, "task.get", {"task_id": accepted[0][2]}, user="u0")
            return reply.data["status"] == "running"

        await wait_until(some_running, message="tasks running")
        doomed.kill()
        processes(nats_server.url, "survivor")
        await wait_for_service(bus)

        async def all_final() -> bool:
            for user, _, task_id in accepted:
                reply = await call(bus, "task.get", {"task_id": task_id}, user=user)
                if reply.data["status"] not in ("completed", "failed", "timed_out"):
                    return False
            return True

        await wait_until(all_final, timeout=40, message="every acknowledged task finished")
        for user, sid, task_id in accepted:
            task = (await call(bus, "task.get", {"task_id": task_id}, user=user)).data
            assert task["status"] == "completed", task
            log = (await call(bus, "session.events", {"session_id": sid}, user=user)).data["events"]
            responses = [e for e in log if e["event"]["type"] == "chat.response"]
            assert len(responses) == 1
            assert_final_attempt_is_the_answer(log, task_id)
    finally:
        await agent.stop()
