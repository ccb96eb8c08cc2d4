"""The client side of chat over NATS, shared by the durable floor, the peer and the orchestrator."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from orchestrator.codecs.transport import ERROR_CODE_HEADER
from orchestrator.subjects import Subjects

from .systems import AGENT_ID, CONTENT, TENANT, user_of


class BenchError(RuntimeError):
    """The system under test answered with an error."""


class _LiveEvent(msgspec.Struct):
    """Only what the client needs from a live event; other fields are skipped by the decoder."""

    type: str = ""
    session_id: str = ""


_decode_live = msgspec.json.Decoder(_LiveEvent).decode
_encode = msgspec.json.Encoder().encode


def _reply_body(msg: Msg) -> dict[str, Any]:
    """The decoded reply; BenchError if it is an error envelope or has micro error headers."""
    if msg.headers and msg.headers.get(ERROR_CODE_HEADER):
        raise BenchError(f"{msg.headers.get(ERROR_CODE_HEADER)}: {msg.data[:200]!r}")
    body = msgspec.json.decode(msg.data) if msg.data else {}
    if not isinstance(body, dict):
        raise BenchError(f"unexpected reply {msg.data[:200]!r}")
    if "error" in body:
        raise BenchError(str(body["error"])[:300])
    return body


def _field(body: dict[str, Any], name: str) -> str:
    """A field of a reply, whether the reply is the bare result or wraps it under `data`."""
    if name in body:
        return body[name]
    data = body.get("data")
    if isinstance(data, dict) and name in data:
        return data[name]
    raise BenchError(f"reply has no {name}: {str(body)[:200]}")


class NatsChat:
    """session.start, then chat.send and (optionally) waiting for the chat.response live event."""

    def __init__(self, nc: Client, subjects: Subjects, timeout: float = 30.0) -> None:
        self.nc = nc
        self.subjects = subjects
        self.timeout = timeout
        self.sessions: list[str] = []
        self._waiting: dict[str, asyncio.Future[float]] = {}
        self._live: Subscription | None = None
        self._send_subject = subjects.action("chat.send")
        self._payloads: list[bytes] = []

    async def start_session(self, user_id: str) -> str:
        """Start a session for `user_id` with the bench agent; its id."""
        body = {"tenant_id": TENANT, "user_id": user_id, "data": {"agent_id": AGENT_ID}}
        reply = await self.nc.request(
            self.subjects.action("session.start"), _encode(body), timeout=self.timeout
        )
        return _field(_reply_body(reply), "session_id")

    async def prepare(self, clients: int, parallel: int = 32) -> None:
        """One session per client index (client i is user `u<i>`), started `parallel` at a time."""
        for first in range(len(self.sessions), clients, parallel):
            batch = range(first, min(clients, first + parallel))
            self.sessions += await asyncio.gather(*(self.start_session(user_of(i)) for i in batch))
        self._payloads = [
            _encode(
                {
                    "tenant_id": TENANT,
                    "user_id": user_of(i),
                    "data": {"session_id": sid, "content": CONTENT},
                }
            )
            for i, sid in enumerate(self.sessions)
        ]

    async def listen(self) -> None:
        """Receive every live event of this system; resolve waiting sends on chat.response."""
        if self._live is None:
            self._live = await self.nc.subscribe(self.subjects.live_all, cb=self._on_live)

    async def unlisten(self) -> None:
        if self._live is not None:
            await self._live.unsubscribe()
            self._live = None

    async def _on_live(self, msg: Msg) -> None:
        event = _decode_live(msg.data)
        if event.type != "chat.response":
            return
        future = self._waiting.pop(event.session_id, None)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    async def send(self, index: int, wait_final: bool) -> dict[str, float]:
        """Client `index` sends one message; latencies of the ack and (if asked) the answer."""
        sid = self.sessions[index]
        future: asyncio.Future[float] | None = None
        if wait_final:
            # Registered before sending: the answer may overtake the ack's processing here.
            future = asyncio.get_running_loop().create_future()
            self._waiting[sid] = future
        t0 = time.perf_counter()
        try:
            reply = await self.nc.request(
                self._send_subject, self._payloads[index], timeout=self.timeout
            )
            _reply_body(reply)
            observed = {"ack": time.perf_counter() - t0}
            if future is not None:
                done_at = await asyncio.wait_for(future, self.timeout)
                observed["final"] = done_at - t0
            return observed
        finally:
            if future is not None:
                self._waiting.pop(sid, None)

    async def submit(self, index: int) -> str:
        """Client `index` sends one message; the task id its acknowledgement names."""
        reply = await self.nc.request(
            self._send_subject, self._payloads[index], timeout=self.timeout
        )
        return _field(_reply_body(reply), "task_id")

    async def ack_only(self, index: int) -> dict[str, float]:
        return await self.send(index, wait_final=False)

    async def chat(self, index: int) -> dict[str, float]:
        return await self.send(index, wait_final=True)
