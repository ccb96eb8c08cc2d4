"""A WebSocket chat client for tests: join with a token and `after_seq`, chat, record, resume.

One `ChatClient` follows one session across any number of sockets (and edges): every frame it
receives is recorded in arrival order, event frames by their `seq`, so a test can ask whether a
resumed stream had a gap or a duplicate at the seam.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

Frame = dict[str, Any]
_GONE = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
         aiohttp.WSMsgType.ERROR)  # fmt: skip


class JoinRefused(Exception):
    """The edge answered a join with an `error` frame or a close, not `session.ready`."""

    def __init__(self, close_code: int | None, error: Frame | None) -> None:
        super().__init__(f"join refused: close {close_code}, {error}")
        self.close_code = close_code
        self.error = error


class ChatClient:
    """One user's view of one session over WebSockets, resumable on any edge."""

    def __init__(self, http: aiohttp.ClientSession, token: str, session_id: str) -> None:
        self.http = http
        self.token = token
        self.session_id = session_id
        self.frames: list[Frame] = []
        self.readies: list[Frame] = []
        self.close_code: int | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pump: asyncio.Task | None = None
        self._changed = asyncio.Event()

    @property
    def seqs(self) -> list[int]:
        """Sequences of every event frame received, in arrival order, over every socket."""
        return [f["seq"] for f in self.frames if "seq" in f]

    @property
    def last_seq(self) -> int:
        return max(self.seqs, default=0)

    @property
    def connected(self) -> bool:
        return self._pump is not None and not self._pump.done()

    def of_type(self, type_: str) -> list[Frame]:
        return [f for f in self.frames if f["type"] == type_]

    def acks(self) -> dict[str, Frame]:
        """`ack` frames by the id of the `chat.message` they answer."""
        return {f["id"]: f for f in self.of_type("ack")}

    def errors(self) -> dict[str, Frame]:
        """`error` frames by the id of the frame they answer (frames without an id are left out)."""
        return {f["id"]: f for f in self.of_type("error") if "id" in f}

    def responses(self) -> Counter[str]:
        """How many `chat.response` frames arrived per task id."""
        return Counter(f["data"]["task_id"] for f in self.of_type("chat.response"))

    def duplicates(self) -> list[int]:
        return sorted(seq for seq, n in Counter(self.seqs).items() if n > 1)

    def gaps(self, stored: list[int]) -> list[int]:
        """Stored sequences up to the last one received that this client never received."""
        seen = set(self.seqs)
        return [seq for seq in stored if seq <= self.last_seq and seq not in seen]

    async def connect(
        self, base_url: str, after_seq: int | None = None, timeout: float = 10.0
    ) -> Frame:
        """Join on `base_url` after `after_seq` (default: the last seq seen); the ready data."""
        await self.drop()
        after = self.last_seq if after_seq is None else after_seq
        url = f"{base_url.rstrip('/')}/ws/chat/{self.session_id}"
        self.close_code = None
        self._ws = await self.http.ws_connect(
            url, params={"token": self.token, "after_seq": str(after)}
        )
        readies = len(self.readies)
        start = len(self.frames)
        self._pump = asyncio.create_task(self._read(self._ws))
        await self.wait(lambda: len(self.readies) > readies or not self.connected, timeout)
        if len(self.readies) == readies:
            errors = [f for f in self.frames[start:] if f["type"] == "error"]
            raise JoinRefused(self.close_code, errors[0] if errors else None)
        return self.readies[-1]

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                msg = await ws.receive()
                if msg.type in _GONE:
                    # CLOSE carries the code the server sent; afterwards close_code may be 1006.
                    code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else ws.close_code
                    self.close_code = code if isinstance(code, int) else ws.close_code
                    return
                if msg.type is aiohttp.WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                    if frame["type"] == "session.ready":
                        self.readies.append(frame["data"])
                    else:
                        self.frames.append(frame)
                self._changed.set()
        finally:
            self._changed.set()

    async def send(self, frame: Frame) -> None:
        assert self._ws is not None, "not connected"
        await self._ws.send_str(json.dumps(frame))

    async def send_raw(self, payload: str | bytes, binary: bool = False) -> None:
        """A frame as given; bytes that are not `binary` go as a text frame, UTF-8 or not."""
        assert self._ws is not None, "not connected"
        if isinstance(payload, str):
            await self._ws.send_str(payload)
        elif binary:
            await self._ws.send_bytes(payload)
        else:  # aiohttp's send_str insists on valid text; its frame writer does not
            await self._ws._writer.send_frame(payload, aiohttp.WSMsgType.TEXT)

    async def chat(self, content: str, frame_id: str) -> None:
        await self.send({"type": "chat.message", "id": frame_id, "data": {"content": content}})

    async def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Until `condition()` holds (re-checked at every frame or disconnect) or `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            if condition():
                break
            try:
                async with asyncio.timeout(min(left, 0.5)):
                    await self._changed.wait()
            except TimeoutError:
                pass
        return True

    async def drop(self) -> None:
        """Cut the TCP connection without a close frame, as a crashed client does."""
        ws, self._ws = self._ws, None
        pump, self._pump = self._pump, None
        if ws is not None and not ws.closed:
            connection = ws._conn  # aiohttp has no public way to the transport
            if connection is not None and connection.transport is not None:
                connection.transport.abort()
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def close(self) -> None:
        """A polite close (close frame and handshake)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._pump is not None:
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
