"""The WebSocket bridge against a real orchestrator, reference agent and nats-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from conftest import wait_until

from orchestrator.codecs.errors import CloseCode
from orchestrator.codecs.events import ChatChunk
from orchestrator.codecs.wire import encode
from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.edge_server import Edge
from orchestrator.service.store.ids import utcnow

TIMEOUT = 10.0


class Client:
    """One user of the edge: a token and an HTTP session."""

    def __init__(self, edge: Edge, http: aiohttp.ClientSession, tenant="dev", user="alice"):
        self.edge = edge
        self.http = http
        self.token = mint_token(edge.settings, tenant, user)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def start(self, agent_id: str = "demo") -> dict[str, Any]:
        async with self.http.post(
            f"{self.edge.url}/api/chat/start", json={"agent_id": agent_id}, headers=self.auth
        ) as resp:
            assert resp.status == 201, await resp.text()
            return await resp.json()

    async def connect(
        self, session_id: str, after_seq: int | None = None, token: str | None = None
    ):
        params = {"token": token or self.token}
        if after_seq is not None:
            params["after_seq"] = str(after_seq)
        return await self.http.ws_connect(
            f"{self.edge.url}/ws/chat/{session_id}", params=params, autoping=True
        )


async def frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, ws.close_code)
    return json.loads(msg.data)


async def until(ws, type_: str, limit: int = 500) -> list[dict[str, Any]]:
    """Frames up to and including the first of `type_`."""
    seen = []
    for _ in range(limit):
        seen.append(await frame(ws))
        if seen[-1]["type"] == type_:
            return seen
    raise AssertionError(f"no {type_} frame in {limit} frames")


async def closed(ws) -> int | None:
    """Read until the socket closes; its close code."""
    for _ in range(10_000):
        msg = await ws.receive(timeout=TIMEOUT)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return msg.data  # the code the server sent (close_code may be 1006 after it hangs up)
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ws.close_code
    raise AssertionError("socket never closed")


@pytest.fixture
async def edge_factory(stack) -> AsyncIterator:
    started: list[Edge] = []

    async def make(**overrides: Any) -> Edge:
        settings = stack.settings.model_copy(update={"edge_port": 0, **overrides})
        edge = Edge(settings, stack.nc, stack.subjects)
        await edge.start()
        started.append(edge)
        return edge

    yield make
    for edge in started:
        await edge.stop()


@pytest.fixture
async def edge(edge_factory) -> Edge:
    return await edge_factory()


async def test_chat_round_trip_acks_then_streams_chunks_then_response(edge, http):
    alice = Client(edge, http)
    started = await alice.start()
    assert started["ws_url"].endswith(f"/ws/chat/{started['session_id']}")
    ws = await alice.connect(started["session_id"])
    ready = await frame(ws)
    assert ready["type"] == "session.ready"
    assert ready["data"]["recovered"] is True
    history = [await frame(ws) for _ in range(ready["data"]["replayed"])]
    assert [f["type"] for f in history] == ["session.started"]

    await ws.send_json({"type": "chat.message", "id": "m1", "data": {"content": "hello"}})
    frames = await until(ws, "chat.response")
    types = [f["type"] for f in frames]
    ack = next(f for f in frames if f["type"] == "ack")
    assert ack["id"] == "m1"
    chunks = [f for f in frames if f["type"] == "chat.chunk"]
    assert chunks and types.index("ack") < types.index("chat.chunk")
    assert "".join(c["data"]["content"] for c in chunks) == "[Demo] You said: hello"
    assert frames[-1]["data"]["content"] == "[Demo] You said: hello"
    seqs = [f["seq"] for f in frames if "seq" in f]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    accepted = next(f for f in frames if f["type"] == "message.accepted")
    assert ack["data"] == {"task_id": accepted["data"]["task_id"], "seq": accepted["seq"]}
    await ws.close()


async def test_resume_after_a_dropped_connection_has_no_gap_and_no_duplicate(edge, http):
    alice = Client(edge, http)
    sid = (await alice.start())["session_id"]
    ws = await alice.connect(sid)
    await until(ws, "session.started")
    await ws.send_json({"type": "chat.message", "id": "a", "data": {"content": "one"}})
    first = await until(ws, "chat.response")
    with_seq = [f["seq"] for f in first if "seq" in f]
    cut = with_seq[len(with_seq) // 2]  # as if the socket dropped mid-stream
    await ws.close()

    # Events land while nobody is connected.
    http_send = await http.post(
        f"{edge.url}/api/chat/sessions/{sid}/messages", json={"content": "two"}, headers=alice.auth
    )
    assert http_send.status == 202
    task_id = (await http_send.json())["task_id"]

    async def done() -> bool:
        async with http.get(f"{edge.url}/api/tasks/{task_id}", headers=alice.auth) as resp:
            return (await resp.json())["status"] == "completed"

    await wait_until(done, message="the task completes")

    async with http.get(
        f"{edge.url}/api/chat/sessions/{sid}/events?after_seq=0&limit=100", headers=alice.auth
    ) as resp:
        stored = [e["seq"] for e in (await resp.json())["events"]]

    ws = await alice.connect(sid, after_seq=cut)
    ready = await frame(ws)
    assert ready["type"] == "session.ready" and ready["data"]["after_seq"] == cut
    replayed = [await frame(ws) for _ in range(ready["data"]["replayed"])]
    assert [f["seq"] for f in replayed] == [s for s in stored if s > cut]
    answers = [f["data"]["content"] for f in replayed if f["type"] == "chat.response"]
    assert answers == ["[Demo] You said: one", "[Demo] You said: two"][-len(answers) :]
    assert answers[-1] == "[Demo] You said: two"
    await ws.close()


async def test_live_events_published_during_replay_are_delivered_once(
    edge, edge_factory, stack, http
):
    alice = Client(edge, http)
    sid = (await alice.start())["session_id"]
    js = stack.nc.jetstream()
    subject = stack.subjects.session_events(sid)

    async def publish(index: int) -> int:
        event = ChatChunk(session_id=sid, at=utcnow(), task_id="t", index=index, content=f"{index}")
        return (await js.publish(subject, encode(event))).seq

    for index in range(150):  # more than one replay page
        await publish(index)
    ws = await alice.connect(sid)
    writer = asyncio.ensure_future(asyncio.gather(*(publish(i) for i in range(150, 200))))
    ready = await frame(ws)
    seen = [await frame(ws) for _ in range(ready["data"]["replayed"])]
    await writer
    while len([f for f in seen if f["type"] == "chat.chunk"]) < 200:
        seen.append(await frame(ws))
    indexes = [f["data"]["index"] for f in seen if f["type"] == "chat.chunk"]
    assert sorted(indexes) == list(range(200))
    seqs = [f["seq"] for f in seen]
    assert seqs == sorted(set(seqs))
    await ws.close()


async def test_a_foreign_users_session_is_refused_with_not_found(edge, http):
    sid = (await Client(edge, http).start())["session_id"]
    for mallory in (Client(edge, http, tenant="other"), Client(edge, http, user="mallory")):
        ws = await mallory.connect(sid)
        error = await frame(ws)
        assert error["type"] == "error" and error["data"]["error"]["code"] == "not_found"
        assert await closed(ws) == 4404


async def test_unknown_session_closes_with_4404_and_bad_token_with_4401(edge, http):
    alice = Client(edge, http)
    ws = await alice.connect("nosuchsession")
    assert (await frame(ws))["data"]["error"]["code"] == "not_found"
    assert await closed(ws) == 4404
    ws = await alice.connect("nosuchsession", token="not-a-token")
    assert (await frame(ws))["data"]["error"]["code"] == "unauthorized"
    assert await closed(ws) == 4401


async def test_ping_gets_pong_and_bad_frames_get_validation_errors(edge, http):
    alice = Client(edge, http)
    ws = await alice.connect((await alice.start())["session_id"])
    await until(ws, "session.started")
    await ws.send_json({"type": "ping", "id": "p1"})
    assert await frame(ws) == {"type": "pong", "id": "p1"}
    for bad in ('{"type": "chat.message", "data": {}}', "not json", '{"type": "nope"}'):
        await ws.send_str(bad)
        error = await frame(ws)
        assert error["type"] == "error" and error["data"]["error"]["code"] == "validation_error"
    await ws.send_bytes(b"\x00")
    assert (await frame(ws))["data"]["error"]["code"] == "validation_error"
    await ws.close()


def connection_tasks(edge) -> list[asyncio.Task]:
    """Tasks the edge's connections started themselves (writer, chats): none may outlive them."""
    return [task for conn in edge.bridge.connections for task in conn.active_tasks]


async def test_idle_sockets_hold_no_task_of_their_own_and_still_get_frames(edge, http):
    sockets = []
    for index in range(5):
        client = Client(edge, http, user=f"idle{index}")
        ws = await client.connect((await client.start())["session_id"])
        await until(ws, "session.started")
        sockets.append(ws)
    assert len(edge.bridge.connections) == len(sockets)
    for round_ in range(2):  # the writer that answers a frame ends; the next frame starts one
        for index, ws in enumerate(sockets):
            await ws.send_json({"type": "ping", "id": f"p{round_}.{index}"})
            assert (await until(ws, "pong"))[-1]["id"] == f"p{round_}.{index}"
        await wait_until(lambda: not connection_tasks(edge), message="idle connections' tasks end")
    for ws in sockets:
        await ws.close()


async def test_frames_over_the_rate_get_rate_limited_errors_without_closing(edge_factory, http):
    edge = await edge_factory(ws_rate=0.01, ws_burst=3)
    alice = Client(edge, http)
    ws = await alice.connect((await alice.start())["session_id"])
    await until(ws, "session.started")
    for index in range(5):
        await ws.send_json({"type": "ping", "id": str(index)})
    replies = [await frame(ws) for _ in range(5)]
    assert [r["type"] for r in replies] == ["pong"] * 3 + ["error"] * 2
    assert replies[-1]["data"]["error"]["code"] == "rate_limited"
    assert not ws.closed
    assert edge.bridge.stats.rate_limited == 2
    await ws.close()


async def test_chat_messages_over_the_user_rate_are_refused_per_user(edge_factory, http):
    edge = await edge_factory(user_rate=0.01, user_burst=2)  # one goes to starting the session
    alice = Client(edge, http)
    ws = await alice.connect((await alice.start())["session_id"])
    await until(ws, "session.started")
    await ws.send_json({"type": "chat.message", "id": "1", "data": {"content": "a"}})
    await ws.send_json({"type": "chat.message", "id": "2", "data": {"content": "b"}})
    frames = await until(ws, "chat.response")
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["id"] for e in errors] == ["2"]
    assert errors[0]["data"]["error"]["code"] == "rate_limited"
    await ws.close()


async def test_a_frame_over_the_size_limit_closes_with_1009(edge_factory, http):
    edge = await edge_factory(ws_max_frame_bytes=1024)
    alice = Client(edge, http)
    ws = await alice.connect((await alice.start())["session_id"])
    await until(ws, "session.started")
    await ws.send_json({"type": "chat.message", "data": {"content": "x" * 2048}})
    assert await closed(ws) == CloseCode.MESSAGE_TOO_BIG


async def test_a_client_that_never_reads_is_closed_as_a_slow_consumer(edge_factory, stack, http):
    edge = await edge_factory(ws_send_queue=4, ws_close_timeout=10.0)
    alice = Client(edge, http)
    sid = (await alice.start())["session_id"]
    ws = await alice.connect(sid)
    await until(ws, "session.started")
    js = stack.nc.jetstream()
    big = "x" * 64 * 1024
    # Far more than the socket buffers hold: the edge's queue must fill and it must give up.
    for index in range(400):
        if edge.bridge.stats.slow_consumers:
            break
        event = ChatChunk(session_id=sid, at=utcnow(), task_id="t", index=index, content=big)
        await js.publish(stack.subjects.session_events(sid), encode(event))
    await wait_until(lambda: edge.bridge.stats.slow_consumers, message="a slow consumer is seen")
    assert edge.bridge.stats.slow_consumers == 1
    assert await closed(ws) == CloseCode.SLOW_CONSUMER
    await wait_until(lambda: not edge.bridge.connections, message="the connection is gone")


async def test_token_expiry_warns_then_closes_with_4401(edge_factory, http):
    # 6 s to join in before the token ends: a loaded machine cannot make the join race it.
    edge = await edge_factory(token_refresh_warning=1.0, jwt_leeway=0.0)
    alice = Client(edge, http)
    sid = (await alice.start())["session_id"]
    ws = await alice.connect(sid, token=mint_token(edge.settings, "dev", "alice", ttl=6))
    frames = await until(ws, "auth.expiring")
    assert frames[-1]["data"]["seconds_left"] <= 1.0
    assert await closed(ws) == 4401


async def test_auth_refresh_extends_the_connection_and_rejects_another_user(edge_factory, http):
    # The warning comes at once (7 s before an 8 s token ends), leaving 7 s to refresh in: a
    # loaded machine cannot make the refresh race the first token's expiry.
    edge = await edge_factory(token_refresh_warning=7.0, jwt_leeway=0.0)
    alice = Client(edge, http)
    sid = (await alice.start())["session_id"]
    first = mint_token(edge.settings, "dev", "alice", ttl=8)
    first_exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    ws = await alice.connect(sid, token=first)
    await until(ws, "auth.expiring")
    await ws.send_json({"type": "auth.refresh", "id": "r", "data": {"token": "garbage"}})
    assert (await until(ws, "error"))[-1]["data"]["error"]["code"] == "unauthorized"
    fresh = mint_token(edge.settings, "dev", "alice", ttl=60)
    await ws.send_json({"type": "auth.refresh", "id": "r2", "data": {"token": fresh}})
    refreshed = (await until(ws, "auth.refreshed"))[-1]
    assert refreshed["id"] == "r2"
    # Past the first token's expiry (the condition is the clock itself), the socket is open.
    await wait_until(
        lambda: time.time() > first_exp + 0.5, timeout=15, message="first token expired"
    )
    await ws.send_json({"type": "ping", "id": "still"})
    assert (await until(ws, "pong"))[-1]["id"] == "still"
    other = mint_token(edge.settings, "dev", "bob", ttl=60)
    await ws.send_json({"type": "auth.refresh", "id": "r3", "data": {"token": other}})
    assert (await until(ws, "error"))[-1]["data"]["error"]["code"] == "forbidden"
    assert await closed(ws) == 4403


async def test_an_idle_client_is_closed_even_while_it_answers_heartbeats(edge_factory, http):
    edge = await edge_factory(ws_idle_timeout=1.0, ws_heartbeat=0.2)
    alice = Client(edge, http)
    ws = await alice.connect((await alice.start())["session_id"])
    assert await closed(ws) == CloseCode.IDLE_TIMEOUT


async def test_closing_the_session_sends_session_closed_then_closes_normally(edge, http):
    alice = Client(edge, http)
    sid = (await alice.start())["session_id"]
    ws = await alice.connect(sid)
    await until(ws, "session.started")
    async with http.delete(f"{edge.url}/api/chat/sessions/{sid}", headers=alice.auth) as resp:
        assert resp.status == 200
    assert (await until(ws, "session.closed"))[-1]["seq"] > 0
    assert await closed(ws) == CloseCode.NORMAL


async def test_stopping_the_edge_closes_sockets_with_1012_and_refuses_new_ones(edge, http):
    alice = Client(edge, http)
    ws = await alice.connect((await alice.start())["session_id"])
    await until(ws, "session.started")
    stopping = asyncio.create_task(edge.stop())
    assert await closed(ws) == CloseCode.SERVICE_RESTART
    await stopping
    with pytest.raises(aiohttp.ClientError):
        await alice.connect("anything")
