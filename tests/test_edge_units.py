"""Pure pieces of the edge: token buckets, frame codecs, close codes."""

from __future__ import annotations

import msgspec
import pytest

from orchestrator.codecs.errors import TRANSPORT, CloseCode, ErrorCode, ValidationFailed
from orchestrator.codecs.frames import (
    AckData,
    ChatMessageFrame,
    ClientMessage,
    PingFrame,
    ServerFrame,
    WebSocketMessageType,
)
from orchestrator.codecs.wire import decode, encode
from orchestrator.service.edge.ratelimit import TokenBucket, UserLimiter


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_refills_at_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after == pytest.approx(0.5)
    clock.now = 0.5
    assert bucket.take() and not bucket.take()
    clock.now = 100
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_user_limiter_keeps_users_apart_and_forgets_idle_ones():
    clock = FakeClock()
    limiter = UserLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.take("t", "alice") is None
    assert limiter.take("t", "alice") == pytest.approx(1.0)
    assert limiter.take("t", "bob") is None
    assert limiter.take("other", "alice") is None
    for index in range(3000):
        limiter.take("t", f"user{index}")
        clock.now += 0.01
    # Idle users' full buckets are dropped, so the table is bounded by recent activity.
    assert len(limiter) < 3000


def test_client_frames_decode_by_type_and_reject_the_rest():
    frame = decode(b'{"type": "chat.message", "id": "1", "data": {"content": "hi"}}', ClientMessage)
    assert isinstance(frame, ChatMessageFrame) and frame.data.content == "hi" and frame.id == "1"
    assert isinstance(decode(b'{"type": "ping"}', ClientMessage), PingFrame)
    for bad in (b'{"type": "ack"}', b'{"type": "chat.message", "data": {"content": ""}}',
                b'{"type": "chat.message", "data": {"content": "x", "extra": 1}}',
                b'{"type": "ping", "id": "' + b"x" * 65 + b'"}'):  # fmt: skip
        with pytest.raises(ValidationFailed):
            decode(bad, ClientMessage)


def test_server_frames_omit_what_they_do_not_carry():
    pong = msgspec.json.decode(encode(ServerFrame(type=WebSocketMessageType.PONG, id="7")))
    assert pong == {"type": "pong", "id": "7"}
    ack = ServerFrame(type=WebSocketMessageType.ACK, id="m", data=AckData(task_id="t", seq=4))
    assert msgspec.json.decode(encode(ack)) == {
        "type": "ack",
        "id": "m",
        "data": {"task_id": "t", "seq": 4},
    }


def test_the_public_frame_type_names_are_stable():
    names = {t.value for t in WebSocketMessageType}
    assert {"chat.message", "ping", "auth.refresh", "ack", "chat.chunk", "chat.response",
            "task.status", "error", "pong", "session.closed"} <= names  # fmt: skip


def test_named_close_codes_do_not_collide_with_error_close_codes():
    error_codes = {m.ws_close_code for m in TRANSPORT.values()}
    assert not error_codes & {c.value for c in CloseCode}
    assert TRANSPORT[ErrorCode.UNAUTHORIZED].ws_close_code == 4401
