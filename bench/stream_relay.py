"""The relay floor: an LLM-like agent's parts over core NATS to a plain aiohttp WebSocket relay.

No JetStream, no sessions, no logic: a text frame from the client starts one request to the
agent; every message on the attempt's stream subject is forwarded to the socket as it is; the
agent's reply becomes a `{"type":"done"}` frame. One wildcard subscription serves every socket.
The fastest anything could stream tokens on this machine. Prints READY once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import msgspec
import nats
from aiohttp import WSMsgType, web
from nats.aio.msg import Msg

from orchestrator.codecs.execution_messages import ExecutionAgent, ExecutionRequest
from orchestrator.subjects import Subjects

from .children import announce_ready, until_signalled

DONE = '{"type":"done"}'


class Relay:
    """Sockets by task id; the NATS callback writes to them directly."""

    def __init__(self, nc, subjects: Subjects) -> None:
        self.nc = nc
        self.subjects = subjects
        self.sockets: dict[str, web.WebSocketResponse] = {}

    async def on_part(self, msg: Msg) -> None:
        # <prefix>.execution.stream.<task>.<attempt>.<nonce>
        ws = self.sockets.get(msg.subject.split(".")[-3])
        if ws is not None and not ws.closed:
            await ws.send_str(msg.data.decode())

    async def turn(self, ws: web.WebSocketResponse) -> None:
        task_id = uuid.uuid4().hex
        self.sockets[task_id] = ws
        request = ExecutionRequest(
            task_id=task_id, attempt=1, session_id=task_id, tenant_id="bench", user_id="relay",
            agent_id="llm", agent=ExecutionAgent(), content="hi",
            stream_subject=self.subjects.execution_stream(task_id, 1, uuid.uuid4().hex[:8]),
            heartbeat_interval=5.0,
        )  # fmt: skip
        try:
            await self.nc.request(
                self.subjects.execution_run, msgspec.json.encode(request), timeout=120
            )
            await ws.send_str(DONE)
        finally:
            self.sockets.pop(task_id, None)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await self.turn(ws)
        return ws


async def serve(url: str, prefix: str, port: int) -> None:
    nc = await nats.connect(url, name="bench-relay", pending_size=256 * 2**20)
    relay = Relay(nc, Subjects(prefix))
    await nc.subscribe(relay.subjects.execution_stream_all, cb=relay.on_part,
                       pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30)  # fmt: skip
    app = web.Application()
    app.router.add_get("/ws", relay.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    announce_ready()
    await until_signalled()
    await runner.cleanup()
    await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.url, args.prefix, args.port))
