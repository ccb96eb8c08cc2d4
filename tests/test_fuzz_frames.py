"""Property: no client frame can crash the edge or change state, over a real WebSocket.

Random JSON values, mutated valid frames, random text, random binary, text that is not UTF-8,
deep nesting and oversized frames are sent on one socket to a real edge in front of the real
orchestrator. Each gets the `error` frame with the error envelope (a ping its `pong`, a token
refresh its answer), or a close with its documented code (1009 too big, 1007 not UTF-8) after
which the client resumes; the session, task and event streams never change; nothing is logged
as an unexpected failure; and a valid chat message afterwards gets its answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
from conftest import wait_until
from edge_client import ChatClient
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from loguru import logger
from support.stack import start_stack, stop_stack

from orchestrator.codecs.errors import CloseCode, ErrorCode, ValidationFailed
from orchestrator.codecs.frames import ChatMessageFrame, ClientMessage, PingFrame
from orchestrator.codecs.wire import decode
from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.edge_server import Edge

MAX_FRAME = 4096  # ORCH_WS_MAX_FRAME_BYTES of the fuzzed edge
INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80")
STREAMS = ("KV_sessions", "KV_tasks", "SESSION_EVENTS", "CHAT_WORK")
# What a bad frame may be answered with: a refusal of the frame, never a failure of the server.
REFUSALS = {ErrorCode.VALIDATION_ERROR.value, ErrorCode.UNAUTHORIZED.value}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip


def valid_frames(token: str) -> list[dict[str, Any]]:
    return [
        {"type": "chat.message", "id": "m", "data": {"content": "hello"}},
        {"type": "ping", "id": "p"},
        {"type": "ping", "id": "p", "data": {"k": [1, 2]}},
        {"type": "auth.refresh", "id": "r", "data": {"token": token}},
    ]


@st.composite
def mutated(draw, frame: dict[str, Any]) -> dict[str, Any]:
    """`frame` with a key dropped, an unknown key added, or a value replaced."""
    value = json.loads(json.dumps(frame))
    target = value["data"] if "data" in value and value["data"] and draw(st.booleans()) else value
    key = draw(st.sampled_from(sorted(target)))
    how = draw(st.sampled_from(["drop", "add", "replace", "type"]))
    if how == "drop":
        del target[key]
    elif how == "add":
        target[draw(st.text(min_size=1, max_size=12)) + "_x"] = draw(json_values)
    elif how == "replace":
        target[key] = draw(json_values)
    else:
        value["type"] = draw(st.sampled_from(["ack", "pong", "error", "session.ready", "chat.chunk",
                                              "", "PING", "chat.message ", "x" * 100]))  # fmt: skip
    return value


def nested(depth: int, where: str) -> str:
    arrays = "[" * depth + "]" * depth
    objects = '{"a":' * depth + "1" + "}" * depth
    return {
        "top": arrays,
        "ping_data": f'{{"type": "ping", "data": {{"a": {arrays}}}}}',
        "ping_objects": f'{{"type": "ping", "data": {objects}}}',
        "content": f'{{"type": "chat.message", "data": {{"content": {arrays}}}}}',
    }[where]


@st.composite
def bad_frames(draw, token: str) -> tuple[str, str | bytes]:
    """(kind, payload): `binary` and `bad_utf8` payloads are bytes, every other one is text."""
    kind = draw(st.sampled_from(["value", "mutated", "text", "binary", "bad_utf8", "nested",
                                 "huge"]))  # fmt: skip
    if kind == "value":
        return kind, json.dumps(draw(json_values))
    if kind == "mutated":
        return kind, json.dumps(draw(mutated(draw(st.sampled_from(valid_frames(token))))))
    if kind == "text":
        return kind, draw(st.text(max_size=200))
    if kind == "binary":
        return kind, draw(st.binary(max_size=200))
    if kind == "bad_utf8":
        text = json.dumps({"type": "ping", "id": "MARKER"}).encode()
        return kind, text.replace(b"MARKER", draw(st.sampled_from(INVALID_UTF8)))
    if kind == "nested":
        where = draw(st.sampled_from(["top", "ping_data", "ping_objects", "content"]))
        depth = draw(st.sampled_from([64, 1000, 10_000]))
        return kind, nested(depth, where)[:MAX_FRAME]
    size = MAX_FRAME + draw(st.integers(1, 4 * MAX_FRAME))
    return kind, json.dumps({"type": "chat.message", "data": {"content": "x" * size}})


def expected(kind: str, payload: str | bytes) -> str:
    """What the edge must answer: `error`, `pong`, `refresh`, or `close <code>`."""
    size = len(payload if isinstance(payload, bytes) else payload.encode())
    if size > MAX_FRAME:
        return f"close {CloseCode.MESSAGE_TOO_BIG.value}"
    if kind == "bad_utf8":
        return f"close {aiohttp.WSCloseCode.INVALID_TEXT.value}"
    if kind == "binary":
        return "error"
    try:
        frame = decode(payload, ClientMessage)
    except ValidationFailed:
        return "error"
    # A valid chat message would (rightly) change state: not a bad frame.
    assume(not isinstance(frame, ChatMessageFrame))
    return "pong" if isinstance(frame, PingFrame) else "refresh"


class Failures(logging.Handler):
    """Collects ERROR records from loguru and from stdlib logging (aiohttp's own)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())

    def sink(self, message) -> None:
        self.records.append(str(message))


async def _state(js) -> dict[str, tuple[int, int]]:
    """(messages, last sequence) of every stream the orchestrator writes to."""
    state = {}
    for stream in STREAMS:
        info = await js.stream_info(stream)
        state[stream] = (info.state.messages, info.state.last_seq)
    return state


def test_no_client_frame_crashes_the_edge_or_changes_state(nats_server):
    runner = asyncio.Runner()
    stack = runner.run(start_stack(nats_server))
    failures = Failures()
    logging.getLogger().addHandler(failures)
    sink = logger.add(failures.sink, level="ERROR")
    try:
        settings_ = stack.settings.model_copy(
            update={"edge_port": 0, "ws_max_frame_bytes": MAX_FRAME, "ws_rate": 1e6,
                    "ws_burst": 10**6, "user_rate": 1e6, "user_burst": 10**6}
        )  # fmt: skip
        edge = Edge(settings_, stack.nc, stack.subjects)
        runner.run(edge.start())
        token = mint_token(settings_, "dev", "alice")
        js = stack.nc.jetstream()

        async def prepare() -> ChatClient:
            http = aiohttp.ClientSession()
            async with http.post(
                f"{edge.url}/api/chat/start",
                json={"agent_id": "demo"},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                session_id = (await resp.json())["session_id"]
            client = ChatClient(http, token, session_id)
            await client.connect(edge.url, after_seq=0)
            await client.chat("before", "before")
            assert await client.wait(lambda: bool(client.of_type("chat.response")), 20)
            # The task's last event (its status) is stored after the response: wait for it.
            await wait_until(lambda: bool(client.of_type("task.status")[1:]), message="done")
            return client

        client = runner.run(prepare())
        before = runner.run(_state(js))
        outcomes: list[str] = []

        async def one(kind: str, payload: str | bytes) -> None:
            want = expected(kind, payload)
            if not client.connected:
                await client.connect(edge.url)
            seen = len(client.frames)
            await client.send_raw(payload, binary=kind == "binary")
            assert await client.wait(lambda: len(client.frames) > seen or not client.connected)
            if want.startswith("close"):
                assert not client.connected and f"close {client.close_code}" == want, client.frames
            else:
                assert len(client.frames) > seen, (client.close_code, len(payload))
                reply = client.frames[seen]
                if want == "pong":
                    assert reply["type"] == "pong", reply
                elif want == "refresh":
                    assert reply["type"] in ("auth.refreshed", "error"), reply
                else:
                    assert reply["type"] == "error", (payload, reply)
                if reply["type"] == "error":
                    assert set(reply["data"]) == {"error"}, reply
                    assert reply["data"]["error"]["code"] in REFUSALS, reply
                    assert reply["data"]["error"]["message"]
            outcomes.append(want)
            assert await _state(js) == before

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(data=st.data())
        @example(data=None)
        def refused(data) -> None:
            if data is None:  # the classic ones, every time
                for where in ("top", "ping_data", "ping_objects", "content"):
                    runner.run(one("nested", nested(100_000, where)))
                runner.run(one("bad_utf8", b'{"type": "ping", "id": "\xff"}'))
                runner.run(one("binary", b"\x00\xff"))
                return
            runner.run(one(*data.draw(bad_frames(token))))

        refused()
        assert len(outcomes) >= 100, len(outcomes)  # the property really ran against the edge
        assert {"error", "pong", "close 1009", "close 1007"} <= set(outcomes), set(outcomes)

        async def still_serving() -> None:
            if not client.connected:
                await client.connect(edge.url)
            await client.chat("after", "after")
            assert await client.wait(lambda: len(client.of_type("chat.response")) == 2, 20)
            assert client.of_type("chat.response")[-1]["data"]["content"].endswith("after")
            assert client.duplicates() == []
            await client.close()
            await client.http.close()

        runner.run(still_serving())
        assert failures.records == []
    finally:
        logger.remove(sink)
        logging.getLogger().removeHandler(failures)
        runner.run(edge.stop())
        runner.run(stop_stack(stack))
        runner.close()
