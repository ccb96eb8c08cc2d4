"""The bus side under faults: NATS restarts, orchestrator kill -9, agent deaths, one user's flood.

Each test drives real processes over a real nats-server and checks the promise the service makes:
a chat message that got a success reply ends with exactly one answer, and nothing hangs.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import nats
import pytest
from conftest import wait_until
from support.calls import call, connect_client, seed_demo_agent, wait_for_service
from support.chat_load import (
    TRANSPORT_FAILURES,
    Acked,
    ChatLoad,
    assert_answered_exactly_once,
    assert_final_attempt_is_the_answer,
    open_sessions,
    session_log,
    wait_all_final,
    wait_every_stored_task_final,
)
from support.processes import OrchestratorProcess
from support.stack import start_stack, stop_stack

from orchestrator.service.agent.reference_agent import ReferenceAgent
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.subjects import Subjects

# Retries generous enough to ride out the faults below, so an acknowledged task must complete.
PATIENT = dict(ORCH_EXECUTION_MAX_RETRIES="6", ORCH_TASK_MAX_DELIVERIES="6")
# Refusals a caller may see while a fault lasts: each is a clear answer, not a hang.
FAULT_CODES = {"unavailable", "timeout", "rate_limited"}


@pytest.fixture
def spawn(tmp_path):
    """Start `orchestrator` subprocesses; every one is killed after the test."""
    started: list[OrchestratorProcess] = []

    def start(url: str, name: str, *args: str, **env: str) -> OrchestratorProcess:
        proc = OrchestratorProcess(url, tmp_path / f"{name}.log", **env).start(*args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
async def client(nats_server):
    nc = await connect_client(nats_server.url)
    yield nc
    await nc.close()


@pytest.fixture
async def agent(nats_server):
    """The reference agent in this process, on a connection of its own."""
    nc = await connect_client(nats_server.url)
    ref = ReferenceAgent(nc, Subjects(), AgentSettings(chunk_delay=0.05))
    await ref.start()
    yield ref
    await ref.stop(grace=1.0)
    await nc.close()


async def test_chats_survive_a_nats_server_restart_under_load(
    nats_server, client, agent, spawn
):  # fmt: skip
    for name in ("a", "b"):
        spawn(nats_server.url, name, **PATIENT)
    await wait_for_service(client, count=2)
    await seed_demo_agent(client)
    sessions = await open_sessions(client, [f"u{i}" for i in range(16)])
    chats = ChatLoad(client, sessions, per_user=8, pause=0.2)
    running = asyncio.create_task(chats.run())

    await wait_until(lambda: len(chats.acked) >= 20, timeout=20, message="chats before")
    await asyncio.to_thread(nats_server.stop)
    # While the server is away a request fails on the client's own timeout: no hang.
    with pytest.raises(TRANSPORT_FAILURES):
        await asyncio.wait_for(call(client, "session.list", {}, timeout=1), timeout=5)
    # The outage lasts until the load has felt it: several of its sends lost to it.
    lost_before = len(chats.lost)
    await wait_until(
        lambda: len(chats.lost) >= lost_before + 8, timeout=30, message="sends lost to the outage"
    )
    acked_before = len(chats.acked)
    await asyncio.to_thread(nats_server.start)

    # Both instances reconnect by themselves and take new chats.
    await wait_for_service(client, count=2, timeout=30)
    await wait_until(lambda: len(chats.acked) > acked_before, timeout=20, message="chats after")
    await asyncio.wait_for(running, timeout=60)

    assert chats.lost, "no request was made during the outage"
    assert set(chats.refused) <= FAULT_CODES, chats.refused
    await assert_answered_exactly_once(client, chats.acked)
    await wait_every_stored_task_final(client)  # lost replies included: nothing left running


async def test_kill_9_of_one_instance_under_200_chats_loses_no_acknowledged_message(
    nats_server, client, spawn
):  # fmt: skip
    # The production lease: the failover time printed below is the one a deployment gets.
    lease = str(OrchestratorSettings.model_fields["task_lease"].default)
    doomed = spawn(nats_server.url, "doomed", ORCH_INSTANCE_ID="doomed", ORCH_TASK_LEASE=lease,
                   **PATIENT)  # fmt: skip
    spawn(nats_server.url, "survivor", ORCH_INSTANCE_ID="survivor", ORCH_TASK_LEASE=lease,
          **PATIENT)  # fmt: skip
    await wait_for_service(client, count=2)
    await seed_demo_agent(client)
    agent_nc = await connect_client(nats_server.url)
    # Slow enough answers that the doomed instance is surely running some when it dies.
    agent = ReferenceAgent(agent_nc, Subjects(), AgentSettings(chunks=4, chunk_delay=0.25))
    await agent.start()
    try:
        users = [f"u{i}" for i in range(200)]
        sessions = await open_sessions(client, users)
        acked: list[Acked] = []
        outcomes: list[object] = []

        async def send(user: str, delay: float) -> None:
            await asyncio.sleep(delay)  # spread out, so the kill lands while sends still arrive
            try:
                reply = await call(client, "chat.send",
                                   {"session_id": sessions[user], "content": f"hi from {user}"},
                                   user=user, timeout=5)  # fmt: skip
            except TRANSPORT_FAILURES as exc:
                outcomes.append(type(exc))
                return
            outcomes.append(reply.code)
            if reply.error is None:
                acked.append(Acked(user, sessions[user], reply.data["task_id"]))

        load = asyncio.gather(*(send(u, i * 0.01) for i, u in enumerate(users)))
        tasks_kv = await client.jetstream().key_value("tasks")

        async def doomed_is_running_tasks() -> bool:
            try:
                keys = await tasks_kv.keys()
            except nats.js.errors.NoKeysError:
                return False
            for key in keys:
                task = json.loads((await tasks_kv.get(key)).value)
                if task.get("owner") == "doomed" and task["status"] == "running":
                    return True
            return False

        await wait_until(doomed_is_running_tasks, timeout=30, interval=0.1,
                         message="tasks running on the doomed instance")  # fmt: skip
        doomed.kill()
        killed_at = datetime.now(UTC)
        await asyncio.wait_for(load, timeout=30)

        assert len(outcomes) == len(users)
        assert {o for o in outcomes if isinstance(o, str)} <= FAULT_CODES, outcomes
        final = await assert_answered_exactly_once(client, acked)
        await wait_every_stored_task_final(client)
        # The doomed instance's running tasks were taken over, not dropped.
        assert any(task["attempts"] >= 2 for task in final.values())
        last_answer = max(datetime.fromisoformat(task["updated_at"]) for task in final.values())
        lease = doomed.env["ORCH_TASK_LEASE"]
        print(
            f"failover: last final answer {(last_answer - killed_at).total_seconds():.2f} s "
            f"after kill -9 (ORCH_TASK_LEASE {lease}); {len(final)} acknowledged, 0 lost"
        )
        answered = {item.user for item in acked}
        for user, session_id in sessions.items():
            got = await call(client, "session.get", {"session_id": session_id}, user=user)
            assert got.data["status"] == "open", got.data
            if user not in answered:  # its reply was lost: whatever happened, at most one answer
                log = await session_log(client, user, session_id)
                responses = [e for e in log if e["event"]["type"] == "chat.response"]
                assert len(responses) <= 1, log
    finally:
        await agent.stop(grace=1.0)
        await agent_nc.close()


async def _agent_answers(nc) -> bool:
    """Whether an execution service is subscribed (a malformed request gets its refusal)."""
    try:
        await nc.request(Subjects().execution_run, b"{}", timeout=1)
    except TRANSPORT_FAILURES:
        return False
    return True


async def _chunk_indexes(nc, session_id: str) -> list[int]:
    log = await session_log(nc, "alice", session_id)
    return [e["event"]["index"] for e in log if e["event"]["type"] == "chat.chunk"]


@pytest.mark.parametrize("comes_back", [True, False], ids=["restarted", "gone"])
async def test_agent_process_killed_mid_task_ends_the_task_visibly(nats_server, spawn, comes_back):
    # When it comes back, the retries (at least ~8 s of backoff) outlast a new agent's start-up.
    stack = await start_stack(
        nats_server, agent=None, execution_timeout=4.0,
        execution_max_retries=10 if comes_back else 3,
        execution_backoff_initial=0.25, execution_backoff_max=2.0,
    )  # fmt: skip
    agent_env = dict(ORCH_AGENT_CHUNKS="8", ORCH_AGENT_CHUNK_DELAY="0.3")
    try:
        nc = stack.nc
        first = spawn(nats_server.url, "agent-1", "agent", **agent_env)
        await wait_until(lambda: _agent_answers(nc), timeout=20, message="agent process up")
        sid = (await call(nc, "session.start", {"agent_id": "demo"})).data["session_id"]
        sent = await call(nc, "chat.send", {"session_id": sid, "content": "tell me a story"})
        assert sent.error is None, sent.data
        task_id = sent.data["task_id"]

        async def streaming() -> bool:
            return len(await _chunk_indexes(nc, sid)) >= 2

        await wait_until(streaming, timeout=20, message="the agent streaming chunks")
        first.kill()
        if comes_back:
            spawn(nats_server.url, "agent-2", "agent", **agent_env)

        final = await wait_all_final(nc, [Acked("alice", sid, task_id)], timeout=45)
        task = final[task_id]
        if comes_back:
            # The new agent ran a new attempt: the answer is that attempt's text, stored once.
            assert task["status"] == "completed", task
            assert_final_attempt_is_the_answer(await session_log(nc, "alice", sid), task_id)
            await assert_answered_exactly_once(nc, [Acked("alice", sid, task_id)])
        else:
            assert task["status"] in ("failed", "timed_out"), task
            assert task["error"]["code"] in ("upstream_unavailable", "timeout"), task
            log = await session_log(nc, "alice", sid)
            assert not any(e["event"]["type"] == "chat.response" for e in log)
            statuses = [e["event"]["status"] for e in log if e["event"]["type"] == "task.status"]
            assert statuses[-1] == task["status"]
        assert stack.orchestrator.worker.running == 0
    finally:
        await stop_stack(stack)


async def test_one_users_flood_is_bounded_while_another_user_is_served(nats_server):
    # No execution service at first: the flood's tasks stay in flight (retrying) while it lasts.
    stack = await start_stack(
        nats_server, agent=None, execution_max_retries=200, execution_backoff_max=0.2
    )
    limit = stack.settings.max_inflight_tasks_per_user
    agent = None
    try:
        nc = stack.nc
        sessions = await open_sessions(nc, ["flood", "calm"])
        # The other user sends alongside the flood.
        *flood, calm = await asyncio.gather(*(
            call(nc, "chat.send", {"session_id": sessions["flood"], "content": f"spam {i}"},
                 user="flood", timeout=10)
            for i in range(5 * limit)
        ), call(nc, "chat.send", {"session_id": sessions["calm"], "content": "hello"},
                user="calm", timeout=10))  # fmt: skip
        assert calm.error is None, calm.data
        accepted = [r for r in flood if r.error is None]
        refused = [r for r in flood if r.error is not None]
        assert len(accepted) == limit
        assert {r.code for r in refused} == {"rate_limited"}
        assert {r.headers["Nats-Service-Error-Code"] for r in refused} == {"429"}
        assert all(r.error["details"]["limit"] == limit for r in refused)

        agent = ReferenceAgent(nc, Subjects(), AgentSettings(chunk_delay=0.0))
        await agent.start()
        done = [Acked("flood", sessions["flood"], r.data["task_id"]) for r in accepted]
        done.append(Acked("calm", sessions["calm"], calm.data["task_id"]))
        await assert_answered_exactly_once(nc, done)
        log = await session_log(nc, "flood", sessions["flood"])
        assert sum(e["event"]["type"] == "message.accepted" for e in log) == limit

        async def flood_user_served_again() -> bool:
            reply = await call(nc, "chat.send", {"session_id": sessions["flood"],
                                                 "content": "later"}, user="flood")  # fmt: skip
            assert reply.code in (None, "rate_limited"), reply.data
            return reply.error is None

        # Once its tasks end (their work items are acknowledged) the user may send again.
        await wait_until(flood_user_served_again, timeout=10, interval=0.2, message="quota freed")
    finally:
        if agent is not None:
            await agent.stop(grace=1.0)
        await stop_stack(stack)
