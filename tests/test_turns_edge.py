"""Conversation semantics over the edge: WebSocket frames and HTTP routes for busy policies,
idempotent sends, cancel and input, against a real orchestrator, edge, nats-server and the turn
agent process."""

from __future__ import annotations

import os
import signal

import aiohttp
import pytest
from edge_client import ChatClient
from support.calls import put_agent
from support.programs import turn_agent
from support.stack import start_stack, stop_stack
from turns_helpers import busy_agent

from orchestrator.codecs.agent_configs import BusyPolicy
from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.edge_server import Edge

ENDS = ("completed", "failed", "timed_out", "cancelled")


@pytest.fixture
async def site(nats_server, tmp_path):
    """Orchestrator and edge in-process (edge action timeout 5 s), the turn agent as a process."""
    stack = await start_stack(nats_server, agent=None, edge_action_timeout=5.0)
    for policy in BusyPolicy:
        await put_agent(stack.nc, policy.value, busy_agent(policy))
    edge = Edge(stack.settings.model_copy(update={"edge_port": 0}), stack.nc, stack.subjects)
    await edge.start()
    try:
        async with turn_agent(nats_server.url, tmp_path / "agent.log"):
            async with aiohttp.ClientSession() as http:
                yield edge, http, mint_token(stack.settings, "dev", "alice")
    finally:
        await edge.stop()
        await stop_stack(stack)


async def joined(site, agent_id: str = "enqueue") -> ChatClient:
    edge, http, token = site
    async with http.post(f"{edge.url}/api/chat/start", json={"agent_id": agent_id},
                         headers={"Authorization": f"Bearer {token}"}) as resp:  # fmt: skip
        assert resp.status == 201, await resp.text()
        session_id = (await resp.json())["session_id"]
    client = ChatClient(http, token, session_id)
    await client.connect(edge.url)
    return client


def statuses(client: ChatClient, task_id: str) -> list[str]:
    return [f["data"]["status"] for f in client.of_type("task.status")
            if f["data"]["task_id"] == task_id]  # fmt: skip


def task_frames(client: ChatClient, task_id: str) -> list[dict]:
    return [f for f in client.frames if "seq" in f and f["data"].get("task_id") == task_id]


async def ended(client: ChatClient, task_id: str, timeout: float = 15.0) -> str:
    assert await client.wait(lambda: any(s in ENDS for s in statuses(client, task_id)), timeout)
    return statuses(client, task_id)[-1]


async def test_reject_policy_over_the_websocket(site):
    client = await joined(site, "reject")
    await client.chat("first", "a")
    assert await client.wait(lambda: "a" in client.acks())
    await client.chat("second", "b")
    assert await client.wait(lambda: "b" in client.errors())
    error = client.errors()["b"]["data"]["error"]
    assert error["code"] == "conflict"
    assert error["details"]["task_id"] == client.acks()["a"]["data"]["task_id"]
    assert await ended(client, client.acks()["a"]["data"]["task_id"]) == "completed"
    contents = [f["data"]["content"] for f in client.of_type("message.accepted")]
    assert contents == ["first"]


async def test_interrupt_policy_over_the_websocket(site):
    client = await joined(site, "interrupt")
    await client.chat("/slow first", "a")
    assert await client.wait(lambda: len(client.of_type("chat.chunk")) >= 2)
    await client.chat("second", "b")
    assert await client.wait(lambda: "b" in client.acks())
    first, second = client.acks()["a"]["data"]["task_id"], client.acks()["b"]["data"]["task_id"]
    assert await ended(client, first) == "cancelled"
    assert await ended(client, second) == "completed"
    mine = task_frames(client, first)
    assert mine[-2]["type"] == "chat.response" and mine[-2]["data"]["partial"] is True
    streamed = "".join(f["data"]["content"] for f in mine if f["type"] == "chat.chunk")
    assert mine[-2]["data"]["content"] == streamed
    # The second turn started only after the first ended.
    started = next(f["seq"] for f in task_frames(client, second) if f["type"] == "task.status")
    assert started > mine[-1]["seq"]


async def test_enqueue_policy_over_the_websocket_runs_turns_in_order(site):
    client = await joined(site, "enqueue")
    for i in range(3):  # each after the previous one's ack
        await client.chat(f"m{i}", f"f{i}")
        assert await client.wait(lambda i=i: f"f{i}" in client.acks())
    tasks = [client.acks()[f"f{i}"]["data"] for i in range(3)]
    for task in tasks:
        assert await ended(client, task["task_id"]) == "completed"
    running = [f["data"]["task_id"] for f in client.of_type("task.status")
               if f["data"]["status"] == "running"]  # fmt: skip
    assert running == [t["task_id"] for t in tasks]


async def test_a_repeated_frame_id_is_acknowledged_with_the_first_task(site):
    client = await joined(site)
    await client.chat("once", "same")
    await client.chat("once", "same")
    assert await client.wait(lambda: len(client.of_type("ack")) == 2)
    first, second = client.of_type("ack")
    assert first["data"] == second["data"]
    assert await ended(client, first["data"]["task_id"]) == "completed"
    assert len(client.of_type("message.accepted")) == 1


async def test_a_frame_retried_after_a_stalled_nats_is_stored_once(site, nats_server):
    client = await joined(site)
    os.kill(nats_server.pid, signal.SIGSTOP)
    try:
        await client.chat("stalled", "s1")
        assert await client.wait(lambda: "s1" in client.errors(), timeout=15)
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)
    assert client.errors()["s1"]["data"]["error"]["code"] in ("timeout", "unavailable")
    for _ in range(30):  # what the page does: the same frame again until it is acknowledged
        await client.chat("stalled", "s1")
        count = len(client.of_type("error"))
        assert await client.wait(
            lambda count=count: "s1" in client.acks() or len(client.of_type("error")) > count
        )
        if "s1" in client.acks():
            break
    task_id = client.acks()["s1"]["data"]["task_id"]
    assert await ended(client, task_id) == "completed"
    accepted = [f["data"]["task_id"] for f in client.of_type("message.accepted")]
    assert accepted == [task_id]


async def test_cancel_frame_mid_stream_keeps_the_partial_answer(site):
    client = await joined(site)
    await client.chat("/slow long", "m")
    assert await client.wait(lambda: len(client.of_type("chat.chunk")) >= 3)
    task_id = client.acks()["m"]["data"]["task_id"]
    await client.send({"type": "task.cancel", "id": "c", "data": {"task_id": task_id}})
    assert await client.wait(lambda: any(f.get("id") == "c" for f in client.of_type("task")))
    assert await ended(client, task_id) == "cancelled"
    mine = task_frames(client, task_id)
    assert mine[-1]["type"] == "task.status" and mine[-1]["data"]["status"] == "cancelled"
    assert mine[-2]["type"] == "chat.response" and mine[-2]["data"]["partial"] is True
    assert mine[-2]["data"]["content"].startswith("/slow long:0 /slow long:1 /slow long:2 ")
    await client.send({"type": "task.cancel", "id": "c2", "data": {"task_id": task_id}})
    assert await client.wait(lambda: "c2" in client.errors())
    assert client.errors()["c2"]["data"]["error"]["code"] == "conflict"


async def test_input_round_trip_over_the_websocket_and_http(site):
    edge, http, token = site
    client = await joined(site)
    await client.chat("/ask approve", "q")
    assert await client.wait(lambda: "q" in client.acks())
    task_id = client.acks()["q"]["data"]["task_id"]
    assert await client.wait(lambda: "input_required" in statuses(client, task_id))
    asked = [f for f in client.of_type("task.status") if f["data"]["status"] == "input_required"]
    assert asked[0]["data"]["input"] == {"prompt": "approve?", "schema": {"type": "string"}}
    await client.send({"type": "task.respond", "id": "r", "data": {"task_id": task_id,
                                                                  "content": "yes"}})  # fmt: skip
    assert await client.wait(lambda: any(f.get("id") == "r" for f in client.of_type("task")))
    assert await ended(client, task_id) == "completed"
    response = [f for f in client.of_type("chat.response") if f["data"]["task_id"] == task_id]
    assert response[-1]["data"]["content"] == "done with yes"
    # Over HTTP, with an Idempotency-Key on the send.
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{edge.url}/api/chat/sessions/{client.session_id}/messages"
    replies = []
    for _ in range(2):
        async with http.post(url, json={"content": "/ask again"},
                             headers={**auth, "Idempotency-Key": "k1"}) as resp:  # fmt: skip
            assert resp.status == 202
            replies.append(await resp.json())
    assert replies[0] == replies[1]
    second = replies[0]["task_id"]
    assert await client.wait(lambda: "input_required" in statuses(client, second))
    async with http.post(f"{edge.url}/api/tasks/{second}/respond", json={"content": "ok"},
                         headers=auth) as resp:  # fmt: skip
        assert resp.status == 200, await resp.text()
    assert await ended(client, second) == "completed"
    async with http.post(f"{edge.url}/api/tasks/{second}/respond", json={"content": "late"},
                         headers=auth) as resp:  # fmt: skip
        assert resp.status == 409
