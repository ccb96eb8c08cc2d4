"""Through the edge, with real processes: kill -9 of an edge or of a whole instance, a NATS outage.

Clients are `edge_client.ChatClient`s on real WebSockets; what they received is compared with the
session's stored events (`session.events`), so a gap or a duplicate at a resume seam fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path

import aiohttp
import nats
import pytest
from conftest import wait_until
from edge_client import ChatClient, JoinRefused
from support.calls import call, connect_client, seed_demo_agent, wait_for_service
from support.chat_load import Acked, assert_answered_exactly_once, open_sessions, session_log
from support.processes import OrchestratorProcess, edge_process, wait_ready_status

from orchestrator.service.edge.auth import mint_token
from orchestrator.service.runtime.settings import OrchestratorSettings

SETTINGS = OrchestratorSettings()  # the processes run with the same (dev) JWT settings
# Attempts long enough for the slowest answer here; the lease short so a dead instance's tasks move.
# No coalescing wait: every part (one per 0.1 s) is its own chat.chunk, so the chunk indexes a
# client saw across the edge's death name every part exactly once.
SERVICE_ENV = {"ORCH_EXECUTION_TIMEOUT": "20", "ORCH_TASK_LEASE": "3", "ORCH_STREAM_FLUSH_MS": "0"}
# Each test waits for its agent process (micro service `execution-demo`) before the first send:
# a task's few quick retries (test backoff 0.05 s) are a budget for a flaky agent, not for one still
# starting (a loaded run sent 0.5 s before the agent was up and the turn failed unavailable).


def token(user: str, tenant: str = "dev") -> str:
    return mint_token(SETTINGS, tenant, user)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., OrchestratorProcess]]:
    """Start `orchestrator <args>` children; every one still running is killed afterwards."""
    started: list[OrchestratorProcess] = []

    def start(proc: OrchestratorProcess, *args: str) -> OrchestratorProcess:
        started.append(proc.start(*args))
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
async def bus(nats_server) -> AsyncIterator[nats.aio.client.Client]:
    nc = await connect_client(nats_server.url)
    yield nc
    await nc.close()


def agent(url: str, log: Path, **env: str) -> OrchestratorProcess:
    return OrchestratorProcess(url, log, **{f"ORCH_AGENT_{k.upper()}": v for k, v in env.items()})


async def start_session(http: aiohttp.ClientSession, base_url: str, bearer: str) -> str:
    async with http.post(
        f"{base_url}/api/chat/start",
        json={"agent_id": "demo"},
        headers={"Authorization": f"Bearer {bearer}"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        return (await resp.json())["session_id"]


def task_finished(client: ChatClient, task_id: str) -> bool:
    """The task's final `task.status` frame arrived (it follows the `chat.response`)."""
    return any(
        f["data"]["task_id"] == task_id and f["data"]["status"] == "completed"
        for f in client.of_type("task.status")
    )


async def assert_exactly_the_stored_events(bus, client: ChatClient, user: str) -> None:
    """The client got every stored event of its session up to its last one, once, in order."""
    stored = [record["seq"] for record in await session_log(bus, user, client.session_id)]
    assert client.duplicates() == []
    assert client.gaps(stored) == []
    assert client.seqs == [seq for seq in stored if seq <= client.last_seq]


async def test_a_client_resumes_on_another_edge_after_kill_9_of_its_edge(
    nats_server, tmp_path, spawn, http, bus
):
    url = nats_server.url
    spawn(OrchestratorProcess(url, tmp_path / "service.log", **SERVICE_ENV))
    spawn(agent(url, tmp_path / "agent.log", chunks="20", chunk_delay="0.1"), "agent")
    edge_a, url_a = edge_process(url, tmp_path / "edge-a.log")
    edge_b, url_b = edge_process(url, tmp_path / "edge-b.log")
    spawn(edge_a)
    spawn(edge_b)
    await wait_for_service(bus)
    await wait_for_service(bus, name="execution-demo")  # the agent process too: see SERVICE_ENV
    await seed_demo_agent(bus)
    await wait_ready_status(http, url_a)
    await wait_ready_status(http, url_b)

    alice = ChatClient(http, token("alice"), await start_session(http, url_a, token("alice")))
    await alice.connect(url_a, after_seq=0)
    await alice.chat("tell me a long story", "m1")
    assert await alice.wait(lambda: len(alice.of_type("chat.chunk")) >= 5, 20)
    edge_a.kill()
    assert await alice.wait(lambda: not alice.connected, 10)
    assert not alice.of_type("chat.response"), "the edge was to die mid-stream"
    task_id = alice.acks()["m1"]["data"]["task_id"]
    seen_on_a = alice.last_seq

    ready = await alice.connect(url_b)
    assert ready["after_seq"] == seen_on_a
    assert ready["recovered"] is True
    assert await alice.wait(lambda: task_finished(alice, task_id), 30)
    assert alice.responses() == {task_id: 1}
    chunks = [f["data"]["index"] for f in alice.of_type("chat.chunk")]
    assert chunks == list(range(20))
    await assert_exactly_the_stored_events(bus, alice, "alice")
    await alice.close()


LOAD_USERS = 200
PER_USER = 2


def answered(client: ChatClient, frame_id: str) -> bool:
    """The frame got its `ack` or its `error`."""
    return frame_id in client.acks() or frame_id in client.errors()


async def follow(client: ChatClient, done: Callable[[], bool], fallback: str) -> bool:
    """Wait for `done`; if the socket drops meanwhile, resume on `fallback` and keep waiting."""
    for _ in range(3):
        if await client.wait(lambda: done() or not client.connected, 30) and done():
            return True
        if not client.connected:
            await client.connect(fallback)
    return done()


async def converse(
    client: ChatClient, user: str, fallback: str, acked: list[Acked], refused: list[str]
) -> None:
    """Send messages one after another until `PER_USER` are acknowledged and answered."""
    mine: list[str] = []
    for attempt in range(5 * PER_USER):
        if len(mine) == PER_USER:
            break
        frame_id = f"{user}.{attempt}"
        if not client.connected:
            await client.connect(fallback)
        try:
            await client.chat(f"{user} says {attempt}", frame_id)
        except (ConnectionError, aiohttp.ClientError):
            continue  # the socket died under us: the message never left, send it again
        # An ack or error comes on the socket that took the frame, or never.
        await client.wait(lambda f=frame_id: answered(client, f) or not client.connected, 30)
        if frame_id in client.acks():
            task_id = client.acks()[frame_id]["data"]["task_id"]
            mine.append(task_id)
            acked.append(Acked(user, client.session_id, task_id))
            assert await follow(client, partial(task_finished, client, task_id), fallback)
        elif frame_id in client.errors():
            refused.append(client.errors()[frame_id]["data"]["error"]["code"])
            await asyncio.sleep(0.5)
        # Neither: the edge died first; the message may be stored (and answered) or not.
    assert len(mine) == PER_USER, (user, client.frames[-5:])


async def test_kill_9_of_an_instance_under_200_chats_loses_no_acknowledged_message(
    nats_server, tmp_path, spawn, http, bus
):
    url = nats_server.url
    # Clients here send no pings while they wait: no idle close may count as a drop.
    env = {**SERVICE_ENV, "ORCH_EDGE_ACTION_TIMEOUT": "5", "ORCH_WS_IDLE_TIMEOUT": "600"}
    first, url_1 = edge_process(url, tmp_path / "first.log", role="all", **env)
    second, url_2 = edge_process(url, tmp_path / "second.log", role="all", **env)
    spawn(first)
    spawn(second)
    spawn(agent(url, tmp_path / "agent.log", chunks="10", chunk_delay="0.05"), "agent")
    await wait_for_service(bus, count=2)
    await wait_for_service(bus, name="execution-demo")  # the agent process too: see SERVICE_ENV
    await seed_demo_agent(bus)
    await wait_ready_status(http, url_1)
    await wait_ready_status(http, url_2)

    users = [f"u{i}" for i in range(LOAD_USERS)]
    sessions = await open_sessions(bus, users)
    clients = {u: ChatClient(http, token(u), sessions[u]) for u in users}
    on_first = set(users[::2])
    gate = asyncio.Semaphore(50)

    async def join(user: str) -> None:
        async with gate:
            await clients[user].connect(url_1 if user in on_first else url_2, after_seq=0)

    await asyncio.gather(*(join(u) for u in users))
    acked: list[Acked] = []
    refused: list[str] = []
    load = asyncio.gather(*(converse(clients[u], u, url_2, acked, refused) for u in users))
    await wait_until(
        lambda: len(acked) >= LOAD_USERS * PER_USER // 3 or load.done(), 60, 0.05, "a third acked"
    )
    first.kill()
    await asyncio.wait_for(load, 90)

    await assert_answered_exactly_once(bus, acked)
    for user, client in clients.items():
        if not client.connected:  # finished before the kill: read what happened since
            await client.connect(url_2)
        own = [a.task_id for a in acked if a.user == user]
        assert await client.wait(lambda c=client, o=own: all(task_finished(c, t) for t in o), 30)
        assert all(client.responses()[task_id] == 1 for task_id in own), client.responses()
        await assert_exactly_the_stored_events(bus, client, user)
        # Every client of the dead instance resumed on the other; the others never dropped.
        assert len(client.readies) == (2 if user in on_first else 1), (user, client.readies)
        assert all(ready["recovered"] for ready in client.readies)
    for user in users:
        reply = await call(bus, "session.get", {"session_id": sessions[user]}, user=user)
        assert reply.data["status"] == "open", reply.data
    await asyncio.gather(*(client.close() for client in clients.values()))


async def readiness(http: aiohttp.ClientSession, base_url: str) -> tuple[int, str]:
    """`/health/ready`'s status and error message (empty when ready)."""
    async with http.get(f"{base_url}/health/ready") as resp:
        body = await resp.json()
        return resp.status, body.get("error", {}).get("message", "")


async def wait_disconnected(http: aiohttp.ClientSession, base_url: str) -> None:
    """Until the edge knows it lost NATS (not merely that JetStream is slow)."""

    async def noticed() -> bool:
        return await readiness(http, base_url) == (503, "not connected to NATS")

    await wait_until(noticed, 15, 0.1, "the edge to notice that NATS is gone")


async def test_a_nats_outage_gives_clear_errors_and_the_edge_recovers_by_itself(
    nats_server, tmp_path, spawn, http, bus
):
    url = nats_server.url
    fast = {"ORCH_NATS_RECONNECT_WAIT": "0.2", "ORCH_EDGE_ACTION_TIMEOUT": "2"}
    # Retries that outlast the outage, so a task caught by it still completes afterwards.
    retries = {"ORCH_EXECUTION_MAX_RETRIES": "8", "ORCH_EXECUTION_BACKOFF_INITIAL": "0.5",
               "ORCH_EXECUTION_BACKOFF_MAX": "2"}  # fmt: skip
    spawn(OrchestratorProcess(url, tmp_path / "service.log", **SERVICE_ENV, **fast, **retries))
    slow_agent = agent(url, tmp_path / "agent.log", chunks="10", chunk_delay="0.1")
    slow_agent.env.update(fast)
    spawn(slow_agent, "agent")
    edge, edge_url = edge_process(url, tmp_path / "edge.log", **fast)
    spawn(edge)
    await wait_for_service(bus)
    await wait_for_service(bus, name="execution-demo")  # the agent process too: see SERVICE_ENV
    await seed_demo_agent(bus)
    await wait_ready_status(http, edge_url)

    bearer = {"Authorization": f"Bearer {token('alice')}"}
    alice = ChatClient(http, token("alice"), await start_session(http, edge_url, token("alice")))
    await alice.connect(edge_url, after_seq=0)
    await alice.chat("before", "m1")
    assert await alice.wait(lambda: "m1" in alice.acks(), 10)
    first = alice.acks()["m1"]["data"]["task_id"]
    assert await alice.wait(lambda: task_finished(alice, first), 20)
    await alice.chat("caught by the outage", "m2")
    assert await alice.wait(lambda: len(alice.of_type("chat.chunk")) >= 12, 20)
    caught = alice.acks()["m2"]["data"]["task_id"]

    nats_server.stop()
    await wait_disconnected(http, edge_url)
    async with http.post(
        f"{edge_url}/api/chat/sessions/{alice.session_id}/messages",
        json={"content": "over HTTP while down"},
        headers=bearer,
        timeout=aiohttp.ClientTimeout(total=20),
    ) as resp:
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["error"]["code"] == "unavailable"
    await alice.chat("over the socket while down", "m3")
    assert await alice.wait(lambda: "m3" in alice.errors(), 20)
    assert alice.errors()["m3"]["data"]["error"]["code"] == "unavailable"
    late = ChatClient(http, token("alice"), alice.session_id)
    with pytest.raises(JoinRefused) as refusal:
        await late.connect(edge_url, after_seq=0)
    assert refusal.value.close_code == 4503
    # Down for a few seconds, unready all along; the client's socket stays open meanwhile.
    loop = asyncio.get_running_loop()
    down_until = loop.time() + 3
    while loop.time() < down_until:
        assert (await readiness(http, edge_url))[0] == 503
        await asyncio.sleep(0.2)
    assert alice.connected

    nats_server.start()
    await wait_ready_status(http, edge_url, 200, timeout=30)
    await alice.chat("after", "m4")
    assert await alice.wait(lambda: "m4" in alice.acks(), 20), alice.frames[-3:]
    last = alice.acks()["m4"]["data"]["task_id"]
    assert await alice.wait(lambda: task_finished(alice, last), 30)
    acked = [Acked("alice", alice.session_id, t) for t in (first, caught, last)]
    await assert_answered_exactly_once(bus, acked)
    assert await alice.wait(lambda: task_finished(alice, caught), 30)
    await assert_exactly_the_stored_events(bus, alice, "alice")
    # What was refused while NATS was away was refused unsent: it is never processed later.
    contents = [
        r["event"].get("content") for r in await session_log(bus, "alice", alice.session_id)
    ]
    assert not [c for c in contents if c and "while down" in c]
    await alice.close()


async def test_a_client_resumes_after_a_restart_of_the_whole_system(
    nats_server, tmp_path, spawn, http, bus
):
    url = nats_server.url
    first, first_url = edge_process(url, tmp_path / "first.log", role="all", **SERVICE_ENV)
    spawn(first)
    first_agent = spawn(agent(url, tmp_path / "agent-1.log", chunk_delay="0"), "agent")
    await wait_for_service(bus)
    await wait_for_service(bus, name="execution-demo")
    await seed_demo_agent(bus)
    await wait_ready_status(http, first_url)
    alice = ChatClient(http, token("alice"), await start_session(http, first_url, token("alice")))
    await alice.connect(first_url, after_seq=0)
    await alice.chat("before the restart", "m1")
    first_task = (
        alice.acks()["m1"]["data"]["task_id"]
        if await alice.wait(lambda: "m1" in alice.acks(), 20)
        else None
    )
    assert first_task and await alice.wait(lambda: task_finished(alice, first_task), 30)
    seen = alice.last_seq

    # Everything goes down: the orchestrator and the agent die, the nats-server restarts.
    first.kill()
    first_agent.kill()
    await bus.close()
    nats_server.restart()
    assert await alice.wait(lambda: not alice.connected, 10)

    second, second_url = edge_process(url, tmp_path / "second.log", role="all", **SERVICE_ENV)
    spawn(second)
    spawn(agent(url, tmp_path / "agent-2.log", chunk_delay="0"), "agent")
    bus = await connect_client(url)
    try:
        await wait_for_service(bus)
        # The restarted agent must be serving before the send: the task's execution retries are
        # a budget for a flaky agent, not for one that has not started yet.
        await wait_for_service(bus, name="execution-demo")
        await wait_ready_status(http, second_url)
        ready = await alice.connect(second_url)
        assert ready["after_seq"] == seen and ready["recovered"] is True
        await alice.chat("after the restart", "m2")
        assert await alice.wait(lambda: "m2" in alice.acks(), 20)
        second_task = alice.acks()["m2"]["data"]["task_id"]
        assert await alice.wait(lambda: task_finished(alice, second_task), 30)
        assert alice.responses() == {first_task: 1, second_task: 1}
        await assert_exactly_the_stored_events(bus, alice, "alice")
        await alice.close()
    finally:
        await bus.close()
