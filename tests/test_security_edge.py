"""Edge limits (issue 12): connections could exhaust file descriptors and memory.

Findings: connections trickling one header line every 10 s stayed open (no header timeout);
1,100 idle connections made other tenants' requests fail with "Too many open files"; 500
WebSockets on one token were all accepted; never-reading sockets pinned memory (the outbox was
bounded in frames, not bytes); ping-only sockets outlived the idle timeout; oversized headers
logged a full traceback each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import wait_until
from edge_client import ChatClient, JoinRefused
from support.calls import call

from orchestrator.codecs.frames import ServerFrame
from orchestrator.codecs.frames import WebSocketMessageType as T
from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.edge_server import Edge


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


async def _open(edge: Edge) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", edge.port)


async def _session(stack, user: str = "alice") -> str:
    started = await call(stack.nc, "session.start", {"agent_id": "demo"}, user=user)
    return started.data["session_id"]


async def test_a_client_trickling_header_lines_is_cut_off(edge_factory) -> None:
    edge = await edge_factory(edge_header_timeout=1.0)
    reader, writer = await _open(edge)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
    closed = False
    # 40 lines (under aiohttp's 128-header cap) 0.25 s apart: 10 s, far beyond the timeout.
    for index in range(40):
        try:
            writer.write(f"X-Slow-{index}: 1\r\n".encode())
            await writer.drain()
            if await asyncio.wait_for(reader.read(1024), 0.25) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except ConnectionError:
            closed = True
            break
    writer.close()
    assert closed, "a slow header sender kept its connection"
    # A complete request on a fresh connection is served as ever.
    reader, writer = await _open(edge)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_oversized_headers_are_refused_and_logged_as_one_line(edge_factory) -> None:
    edge = await edge_factory(edge_max_header_bytes=2048)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(level=logging.DEBUG)
    server_log = logging.getLogger("aiohttp.server")
    server_log.addHandler(keep)
    try:
        reader, writer = await _open(edge)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert response.split(b" ", 2)[1] in (b"400", b"431"), response[:80]
        await wait_until(lambda: records, message="the refusal's log line")
    finally:
        server_log.removeHandler(keep)
    [record] = records
    assert record.exc_info is None and record.levelno == logging.WARNING
    assert "\n" not in record.getMessage() and "malformed request" in record.getMessage()


async def test_connections_beyond_the_cap_get_a_clear_503(edge_factory) -> None:
    edge = await edge_factory(edge_max_connections=4, edge_header_timeout=30.0)
    held = [await _open(edge) for _ in range(4)]
    await wait_until(lambda: len(edge._runner.server.connections) == 4, message="4 connections")
    reader, writer = await _open(edge)
    refusal = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert refusal.startswith(b"HTTP/1.1 503") and b'"code":"unavailable"' in refusal
    assert edge.guard.refused == 1
    for _, held_writer in held:
        held_writer.close()
    await wait_until(lambda: not edge._runner.server.connections, message="connections gone")
    reader, writer = await _open(edge)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
    writer.close()


def test_the_connection_cap_stays_below_the_open_file_limit(stack) -> None:
    import resource

    from orchestrator.service.edge.connections import connection_cap

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    settings = stack.settings.model_copy(update={"edge_max_connections": 10**9})
    assert connection_cap(settings) <= soft - settings.edge_fd_reserve


async def test_one_user_may_hold_only_a_few_websockets(edge_factory, stack, http) -> None:
    edge = await edge_factory(ws_max_per_user=2)
    sid = await _session(stack)
    token = mint_token(edge.settings, "dev", "alice")
    clients = [ChatClient(http, token, sid) for _ in range(3)]
    for client in clients[:2]:
        await client.connect(edge.url)
    with pytest.raises(JoinRefused) as refused:
        await clients[2].connect(edge.url)
    assert refused.value.close_code == 1013
    assert refused.value.error["data"]["error"]["code"] == "rate_limited"
    bob = ChatClient(http, mint_token(edge.settings, "dev", "bob"), await _session(stack, "bob"))
    await bob.connect(edge.url)  # another user is not affected
    await clients[0].close()
    await wait_until(lambda: len(edge.bridge.connections) == 2, message="a socket released")
    await clients[2].connect(edge.url)  # a freed slot can be used again
    for client in (*clients[1:], bob):
        await client.close()


async def test_a_never_reading_socket_is_closed_by_outbox_bytes(edge_factory, stack, http) -> None:
    edge = await edge_factory(ws_send_queue_bytes=64 * 1024, ws_send_queue=256)
    sid = await _session(stack)
    client = ChatClient(http, mint_token(edge.settings, "dev", "alice"), sid)
    await client.connect(edge.url)
    [conn] = edge.bridge.connections
    big = ServerFrame(type=T.PONG, id="x" * (30 * 1024))
    for _ in range(3):  # 3 frames of 30 KiB in one go: within 256 frames, over 64 KiB
        conn.enqueue(big)
    assert conn.closing
    await client.wait(lambda: not client.connected, timeout=10)
    assert client.close_code == 4008


async def test_pings_alone_do_not_keep_a_socket_open(edge_factory, stack, http) -> None:
    edge = await edge_factory(ws_idle_timeout=1.0)
    sid = await _session(stack)
    client = ChatClient(http, mint_token(edge.settings, "dev", "alice"), sid)
    await client.connect(edge.url)
    for index in range(100):  # a ping every 0.1 s, up to 10 s
        if not client.connected:
            break
        await client.send({"type": "ping", "id": f"p{index}"})
        await client.wait(lambda: not client.connected, timeout=0.1)
    assert not client.connected and client.close_code == 4408
    assert client.of_type("pong"), "pings were answered while the socket lived"
