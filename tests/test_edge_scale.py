"""SLOW (~10-60 s on 2 cores): 1,000 WebSocket clients chat at once, each gets its own answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from conftest import wait_until

from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.edge_server import Edge

CLIENTS = 1000
SETUP_CONCURRENCY = 100
DEADLINE = 150.0

pytestmark = pytest.mark.timeout(240)  # the one slow edge test; the rest stay fast


@pytest.fixture
async def edge(stack) -> AsyncIterator[Edge]:
    settings = stack.settings.model_copy(update={"edge_port": 0, "edge_action_timeout": 30.0})
    edge = Edge(settings, stack.nc, stack.subjects)
    await edge.start()
    yield edge
    await edge.stop()


async def one_client(edge: Edge, http: aiohttp.ClientSession, index: int, gate, go) -> list[str]:
    """Start a session, connect, wait for everyone, send one message; the answers it saw."""
    user = f"user{index}"
    token = mint_token(edge.settings, "dev", user)
    async with gate:
        async with http.post(
            f"{edge.url}/api/chat/start",
            json={"agent_id": "demo"},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            sid = (await resp.json())["session_id"]
        ws = await http.ws_connect(f"{edge.url}/ws/chat/{sid}", params={"token": token})
    # The socket is read from the start: aiohttp answers the edge's pings only inside receive(),
    # and joining 1,000 clients can outlast a ping and its pong wait on a loaded machine (the
    # edge would rightly close a socket that never answers).
    frames: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
    reader = asyncio.create_task(read_into(ws, frames))
    try:
        await go.wait()
        await ws.send_json({"type": "chat.message", "id": user, "data": {"content": f"hi {user}"}})
        answers, chunks, acked, shown = [], [], False, 0
        while not (answers and acked):
            msg = await asyncio.wait_for(frames.get(), DEADLINE)
            assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
            frame = json.loads(msg.data)
            assert frame["type"] != "error", frame
            acked = acked or (frame["type"] == "ack" and frame["id"] == user)
            if frame["type"] == "chat.chunk":
                # The client rule: a chunk of a higher attempt (a retry under this load, e.g.
                # after a silent attempt) replaces the text of earlier attempts.
                attempt = frame["data"]["attempt"]
                if attempt > shown:
                    shown, chunks = attempt, []
                if attempt == shown:
                    chunks.append(frame["data"]["content"])
            if frame["type"] == "chat.response":
                answers.append(frame["data"]["content"])
        assert "".join(chunks) == answers[0]
        return answers
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await ws.close()


async def read_into(ws: aiohttp.ClientWebSocketResponse, frames: asyncio.Queue) -> None:
    """Every message of `ws` into `frames`, until the socket ends (or DEADLINE passes)."""
    for _ in range(100_000):
        msg = await ws.receive(timeout=DEADLINE)
        frames.put_nowait(msg)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return


async def test_a_thousand_concurrent_clients_each_get_exactly_their_own_answer(edge):
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)
    go = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        clients = [asyncio.create_task(one_client(edge, http, i, gate, go)) for i in range(CLIENTS)]
        await wait_until(
            lambda: len(edge.bridge.connections) == CLIENTS or any(c.done() for c in clients),
            DEADLINE, 0.1, "every client joined",
        )  # fmt: skip
        assert len(edge.bridge.connections) == CLIENTS
        go.set()
        results = await asyncio.wait_for(asyncio.gather(*clients), DEADLINE)
    for index, answers in enumerate(results):
        assert answers == [f"[Demo] You said: hi user{index}"]
