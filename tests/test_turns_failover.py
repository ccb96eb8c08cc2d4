"""Turns across instance failures: order kept through a kill -9 of one of two instances, and an
input round trip across two instances and a restart. Orchestrators and the turn agent are real
processes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp
import nats
import pytest
from conftest import wait_until
from edge_client import ChatClient
from support.calls import Reply, call, connect_client, seed_demo_agent, wait_for_service
from support.chat_load import open_sessions, session_log
from support.processes import OrchestratorProcess, edge_process, wait_ready_status
from support.programs import turn_agent
from turns_helpers import check_one_turn_at_a_time, last_events_are_final, of_task

from orchestrator.service.edge.auth import mint_token
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.kv import matching_keys

TURNS = 4


@pytest.fixture
def spawn(tmp_path):
    """Start `orchestrator` subprocesses; every one is killed after the test."""
    started: list[OrchestratorProcess] = []

    def start(url: str, name: str, **env: str) -> OrchestratorProcess:
        proc = OrchestratorProcess(url, tmp_path / f"{name}.log", **env).start()
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


async def send_until_answered(nc, user: str, sid: str, content: str, send_id: str) -> dict:
    """What a careful client does: retry a lost reply with the same id until one arrives."""
    replies: list[Reply] = []

    async def answered() -> bool:
        try:
            replies.append(await call(nc, "chat.send", {"session_id": sid, "content": content},
                                      user=user, action_id=send_id, timeout=2))  # fmt: skip
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return False
        return True

    await wait_until(answered, timeout=80, interval=0.2, message=f"{send_id} to be answered")
    assert replies[0].error is None, replies[0].data
    return replies[0].data


async def final_status(nc, user: str, task_id: str) -> str:
    reply = await call(nc, "task.get", {"task_id": task_id}, user=user, timeout=3)
    return reply.data.get("status", "")


async def test_turn_order_survives_a_kill_9_of_one_of_two_instances(
    nats_server, client, spawn, tmp_path
):  # fmt: skip
    doomed = spawn(nats_server.url, "doomed", ORCH_INSTANCE_ID="doomed")
    spawn(nats_server.url, "survivor", ORCH_INSTANCE_ID="survivor")
    await wait_for_service(client, count=2)
    await seed_demo_agent(client)
    agent_log = tmp_path / "agent.log"
    async with turn_agent(nats_server.url, agent_log, delay=0.1):
        users = [f"u{i}" for i in range(8)]
        sessions = await open_sessions(client, users)
        owners = [user for user in users for _ in range(TURNS)]

        async def converse(user: str) -> list[dict]:
            # Each message after the previous one's ack, as a chat client sends them.
            return [
                await send_until_answered(
                    client, user, sessions[user], f"{user}-{n}", f"{user}-{n}"
                )
                for n in range(TURNS)
            ]

        load = asyncio.gather(*(converse(user) for user in users))
        tasks_kv = await client.jetstream().key_value("tasks")

        async def doomed_runs_a_turn() -> bool:
            for key in await matching_keys(tasks_kv, "dev.*.*"):
                entry = await tasks_kv.get(key)
                if b'"owner":"doomed"' in entry.value and b'"status":"running"' in entry.value:
                    return True
            return False

        await wait_until(doomed_runs_a_turn, timeout=30, message="a turn running on doomed")
        doomed.kill()
        killed_at = datetime.now(UTC)
        accepted = [a for turns in await asyncio.wait_for(load, timeout=60) for a in turns]

        statuses: list[str] = []

        async def all_completed() -> bool:
            statuses[:] = await asyncio.gather(
                *(final_status(client, user, a["task_id"]) for user, a in zip(owners, accepted,
                                                                               strict=True))
            )  # fmt: skip
            return all(s == "completed" for s in statuses)

        await wait_until(
            all_completed,
            timeout=60,
            interval=0.3,
            message=lambda: f"every turn completed: {list(zip(accepted, statuses, strict=False))}",
        )
        last = datetime.min.replace(tzinfo=UTC)
        for user in users:
            log = await session_log(client, user, sessions[user])
            mine = sorted((a for a in accepted if a["session_id"] == sessions[user]),
                          key=lambda a: a["seq"])  # fmt: skip
            assert len(mine) == TURNS
            assert check_one_turn_at_a_time(log) == [a["task_id"] for a in mine]
            for item in mine:
                last_events_are_final(log, item["task_id"])
                assert (
                    sum(e["type"] == "message.accepted" for e in of_task(log, item["task_id"])) == 1
                )
            last = max(last, *(datetime.fromisoformat(r["event"]["at"]) for r in log))
        views = [(await call(client, "task.get", {"task_id": a["task_id"]}, user=u)).data
                 for u, a in zip(owners, accepted, strict=True)]  # fmt: skip
        assert any(v["attempts"] >= 2 for v in views), "no turn was taken over"
        print(f"turns failover: last final answer {(last - killed_at).total_seconds():.2f} s "
              f"after kill -9 (ORCH_TASK_LEASE {doomed.env['ORCH_TASK_LEASE']})")  # fmt: skip
        assert "OVERLAP" not in agent_log.read_text()


async def test_input_round_trip_across_two_instances_and_a_restart(
    nats_server, client, spawn, tmp_path
):  # fmt: skip
    first = spawn(nats_server.url, "a", ORCH_INSTANCE_ID="a")
    second = spawn(nats_server.url, "b", ORCH_INSTANCE_ID="b")
    await wait_for_service(client, count=2)
    await seed_demo_agent(client)
    async with turn_agent(nats_server.url, tmp_path / "agent.log"):
        sid = (await open_sessions(client, ["alice"]))["alice"]
        asking = await send_until_answered(client, "alice", sid, "/ask ship it", "ask-1")
        behind = await send_until_answered(client, "alice", sid, "after", "after-1")

        async def waiting() -> bool:
            return await final_status(client, "alice", asking["task_id"]) == "input_required"

        await wait_until(waiting, timeout=20, message="input_required")
        view = await call(client, "task.get", {"task_id": asking["task_id"]})
        assert view.data["input"] == {"prompt": "approve?", "schema": {"type": "string"}}
        # Both instances go away; a new one answers and finishes the turn.
        assert first.stop() is not None and second.stop() is not None
        spawn(nats_server.url, "c", ORCH_INSTANCE_ID="c")
        await wait_for_service(client, count=1)
        answered = await call(client, "task.respond",
                              {"task_id": asking["task_id"], "content": "yes"})  # fmt: skip
        assert answered.error is None and answered.data["status"] == "queued", answered.data

        async def finished() -> bool:
            return await final_status(client, "alice", behind["task_id"]) == "completed"

        await wait_until(finished, timeout=30, message="the turn behind it completed")
        task = await call(client, "task.get", {"task_id": asking["task_id"]})
        assert task.data["status"] == "completed" and task.data["answer"] == "done with yes"
        log = await session_log(client, "alice", sid)
        assert check_one_turn_at_a_time(log) == [asking["task_id"], behind["task_id"]]
        statuses = [
            e["status"] for e in of_task(log, asking["task_id"]) if e["type"] == "task.status"
        ]
        assert statuses == ["running", "input_required", "queued", "running", "completed"]
        last_events_are_final(log, asking["task_id"])


async def test_a_frame_repeated_after_a_restart_is_acknowledged_with_the_first_task(
    nats_server, client, tmp_path
):  # fmt: skip
    url = nats_server.url
    first, first_url = edge_process(url, tmp_path / "first.log", role="all")
    second = None
    try:
        first.start()
        await wait_for_service(client)
        await seed_demo_agent(client)
        async with turn_agent(url, tmp_path / "agent.log"):
            async with aiohttp.ClientSession() as http:
                await wait_ready_status(http, first_url)
                bearer = mint_token(OrchestratorSettings(), "dev", "alice")
                async with http.post(
                    f"{first_url}/api/chat/start",
                    json={"agent_id": "demo"},
                    headers={"Authorization": f"Bearer {bearer}"},
                ) as resp:
                    assert resp.status == 201, await resp.text()
                    sid = (await resp.json())["session_id"]  # fmt: skip
                alice = ChatClient(http, bearer, sid)
                await alice.connect(first_url)
                await alice.chat("exactly once", "m-1")
                assert await alice.wait(lambda: "m-1" in alice.acks(), 20)
                acked = alice.acks()["m-1"]["data"]
                # The instance that took the send dies; the client retries on another one.
                first.kill()
                second, second_url = edge_process(url, tmp_path / "second.log", role="all")
                second.start()
                await wait_ready_status(http, second_url)
                await alice.connect(second_url)
                await alice.chat("exactly once", "m-1")
                assert await alice.wait(lambda: len(alice.of_type("ack")) == 2, 20)
                assert alice.of_type("ack")[-1]["data"] == acked
                await alice.close()
            final = await call(client, "task.get", {"task_id": acked["task_id"]})
            log = await session_log(client, "alice", sid)
            accepted = [e["event"]["task_id"] for e in log
                        if e["event"]["type"] == "message.accepted"]  # fmt: skip
            assert accepted == [acked["task_id"]], final.data
    finally:
        first.kill()
        if second is not None:
            second.kill()
