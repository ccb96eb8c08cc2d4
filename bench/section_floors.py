"""Floors: raw request-reply, a plain WebSocket echo, and the durable floor of one chat message."""

from __future__ import annotations

import time

import aiohttp

from orchestrator.service.runtime.nats_server import free_port
from orchestrator.service.store.streams import ensure_resources

from .chat_client import NatsChat
from .children import Child
from .driver import Bench
from .figures import AckLevel, ChatLevel, ChatPath, EchoLevels, Floors, RttLevel
from .systems import echo_subject, system_settings, system_subjects

# About the size of a chat.send envelope, so the floors move the same bytes as a chat message.
ECHO_PAYLOAD = (
    b'{"tenant_id":"bench","user_id":"u0","data":{"session_id":"0123456789abcdef0123456789abcdef",'
    b'"content":"hi"}}'
)
WS_FRAME = '{"type":"chat.message","id":"1","data":{"content":"hi"}}'


async def raw_request_reply(bench: Bench) -> EchoLevels:
    """Floor (a): nats-py request-reply to an echo responder in another process."""
    child = bench.spawn(Child.module("echo-nats", "echo_nats", ["--url", bench.url], bench.log_dir))
    subject = echo_subject()

    async def op(_: int) -> dict[str, float]:
        t0 = time.perf_counter()
        reply = await bench.nc.request(subject, ECHO_PAYLOAD, timeout=10)
        if reply.data != ECHO_PAYLOAD:
            raise ValueError("echo mismatch")
        return {"rtt": time.perf_counter() - t0}

    rows = await bench.levels("nats echo", op, RttLevel, [child], levels=bench.plan.small_levels)
    child.stop()
    return EchoLevels(levels=rows)


class WsClients:
    """N aiohttp WebSocket clients of one URL, opened once and reused by client index."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def ensure(self, count: int) -> None:
        while len(self.sockets) < count:
            self.sockets.append(await self.session.ws_connect(self.url, autoping=True))

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()
        await self.session.close()


async def plain_ws_echo(bench: Bench) -> EchoLevels:
    """Floor (b): a plain aiohttp WebSocket echo server with aiohttp clients."""
    port = free_port()
    child = bench.spawn(Child.module("echo-ws", "echo_ws", ["--port", str(port)], bench.log_dir))
    clients = WsClients(f"ws://127.0.0.1:{port}/ws")
    await clients.ensure(max(bench.plan.levels))

    async def op(index: int) -> dict[str, float]:
        ws = clients.sockets[index]
        t0 = time.perf_counter()
        await ws.send_str(WS_FRAME)
        msg = await ws.receive(timeout=10)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ValueError(f"unexpected frame {msg.type}")
        return {"rtt": time.perf_counter() - t0}

    try:
        rows = await bench.levels("ws echo", op, RttLevel, [child])
    finally:
        await clients.close()
        child.stop()
    return EchoLevels(levels=rows)


async def durable_floor(bench: Bench) -> ChatPath:
    """Floor (c): the writes and request-replies of one chat message, without orchestrator logic."""
    settings = system_settings("floor", bench.url)
    subjects = system_subjects(settings)
    await ensure_resources(bench.js, settings, subjects)
    args = ["--url", bench.url, "--chunks", str(bench.plan.chunks)]
    exec_child = bench.spawn(
        Child.module("floor-exec", "floor", ["--role", "exec", *args], bench.log_dir)
    )
    service = bench.spawn(
        Child.module("floor-service", "floor", ["--role", "service", *args], bench.log_dir)
    )
    chat = NatsChat(bench.nc, subjects)
    await chat.prepare(max(bench.plan.levels))
    await chat.listen()
    measured = [service, exec_child]
    final = await bench.levels("floor chat", chat.chat, ChatLevel, measured)
    await chat.unlisten()

    async with bench.send_path_only(settings.work_stream) as paused:
        ack = await bench.levels("floor ack", chat.ack_only, AckLevel, measured)
    return ChatPath(chat=final, ack=ack, ack_workers_paused=paused)


async def run(bench: Bench) -> Floors:
    """All three floors, in this order."""
    return Floors(
        nats_request_reply=await raw_request_reply(bench),
        ws_echo=await plain_ws_echo(bench),
        durable=await durable_floor(bench),
    )
