"""Hostile input never gets past the decoders: offline, and against a running orchestrator.

Offline, every action's decoder (JSON and MessagePack) turns random, mutated, deeply nested,
badly encoded and mistyped payloads into `ValidationFailed` and nothing else. Online, the same
inputs sent over NATS each get the error envelope with a stable code and the micro error headers,
no bucket or stream changes, and the instance still serves a valid chat afterwards.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
from conftest import wait_until
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from support.calls import call
from support.stack import start_stack, stop_stack

from orchestrator.codecs.actions import ACTIONS
from orchestrator.codecs.errors import ErrorCode, ErrorEnvelope, ValidationFailed, transport_for
from orchestrator.codecs.transport import CONTENT_TYPE_HEADER
from orchestrator.codecs.wire import WireFormat, action_type_of, decode

ACTION_TYPES = sorted(ACTIONS)
EDGE_SEQS = [2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1, 2**64, 2**80]
MAX_BYTES = 64 * 1024  # ORCH_MAX_MESSAGE_BYTES of the fuzzed instance: below NATS' max payload
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"
# What a hostile request may be answered with; `internal` or `unavailable` would mean it got
# further than the decoder and the context check.
REFUSALS = {ErrorCode.VALIDATION_ERROR, ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.FORBIDDEN}
INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what MessagePack can carry
    | st.floats()
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip


def valid_data(action_type: str, session_id: str, task_id: str) -> dict[str, Any]:
    """A payload the decoder accepts for `action_type`."""
    return {
        "session.start": {"agent_id": "demo", "metadata": {"k": "v"}},
        "session.get": {"session_id": session_id},
        "session.list": {"limit": 5},
        "session.update": {"session_id": session_id, "metadata": {"k": "v"}},
        "session.close": {"session_id": session_id, "reason": "bye"},
        "session.events": {"session_id": session_id, "after_seq": 0, "limit": 10},
        "chat.send": {"session_id": session_id, "content": "hello"},
        "task.get": {"task_id": task_id},
        "task.cancel": {"task_id": task_id},
        "task.respond": {"task_id": task_id, "content": "yes"},
        "agent.list": {"limit": 10},
    }[action_type]


def valid_envelope(action_type: str, session_id: str = "s1", task_id: str = "t1") -> dict:
    return {
        "tenant_id": "dev",
        "user_id": "alice",
        "action_type": action_type,
        "action_id": "a1",
        "correlation_id": "c1",
        "created_at": "2024-01-01T00:00:00Z",
        "data": valid_data(action_type, session_id, task_id),
    }


def serialize(value: Any, fmt: WireFormat) -> bytes:
    if fmt is WireFormat.MSGPACK:
        return msgspec.msgpack.encode(value)
    return json.dumps(value, allow_nan=True).encode()


def decodes(action_type: str, body: bytes, fmt: WireFormat) -> bool:
    """Whether the action's decoder accepts `body` (it must raise nothing but ValidationFailed)."""
    try:
        decode(body, action_type_of(action_type), fmt)
    except ValidationFailed:
        return False
    return True


@st.composite
def mutated(draw, envelope: dict) -> dict:
    """`envelope` with a key dropped, an unknown key added, or a value replaced."""
    value = json.loads(json.dumps(envelope))
    target = value if draw(st.booleans()) or not value["data"] else value["data"]
    how = draw(st.sampled_from(["drop", "add", "replace", "bad_id"]))
    key = draw(st.sampled_from(sorted(target)))
    if how == "drop":
        del target[key]
    elif how == "add":
        target[draw(st.text(min_size=1, max_size=12)) + "_x"] = draw(json_values)
    elif how == "replace":
        target[key] = draw(json_values)
    else:
        target[key] = draw(st.sampled_from(["", "a.b", "a b", "*", ">", "x" * 65, "é", "a\n"]))
    return value


def nested(depth: int, where: str) -> bytes:
    """`depth` nested arrays (or objects) at the top, in `data`, or in a field."""
    arrays = b"[" * depth + b"]" * depth
    objects = b'{"a":' * depth + b"1" + b"}" * depth
    return {
        "top": arrays,
        "top_objects": objects,
        "data": b'{"tenant_id":"dev","user_id":"alice","data":' + arrays + b"}",
        "field": b'{"tenant_id":"dev","user_id":"alice","data":{"metadata":' + objects + b"}}",
        "unknown": b'{"tenant_id":"dev","user_id":"alice","data":{},"x":' + arrays + b"}",
        "msgpack": b"\x91" * depth + b"\x90",
    }[where]


@st.composite
def hostile(draw, action_type: str, session_id: str = "s1", task_id: str = "t1"):
    """(body, format, which family of hostility) for one action."""
    fmt = draw(st.sampled_from(list(WireFormat)))
    base = valid_envelope(action_type, session_id, task_id)
    kind = draw(st.sampled_from(["bytes", "mutated", "value", "utf8", "nested", "huge"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), fmt, kind
    if kind == "mutated":
        return serialize(draw(mutated(base)), fmt), fmt, kind
    if kind == "value":
        return serialize(draw(json_values), fmt), fmt, kind
    if kind == "utf8":
        # A marker string swapped for bytes that are not UTF-8, inside a real envelope.
        field = draw(st.sampled_from(["tenant_id", "user_id", "action_id"]))
        body = serialize({**base, field: "MARKER"}, fmt)
        bad = draw(st.sampled_from(INVALID_UTF8))
        # MessagePack strings carry their length: keep it at 6 bytes so only the encoding is bad.
        return body.replace(b"MARKER", (bad * 6)[:6]), fmt, kind
    if kind == "nested":
        where = draw(st.sampled_from(["top", "top_objects", "data", "field", "unknown", "msgpack"]))
        depth = draw(st.sampled_from([64, 1000, 10_000]))
        return nested(depth, where), fmt, kind
    size = MAX_BYTES + draw(st.integers(1, 64 * 1024))
    huge = {**base, "data": {**base["data"], "content": "x" * size, "agent_id": "y" * size}}
    return serialize(huge, fmt), fmt, kind


@st.composite
def extreme_query(draw, session_id: str, task_id: str) -> tuple[str, dict]:
    """A read-only action whose values sit at the limits of their types."""
    ids = st.sampled_from([session_id, session_id, task_id, task_id, "x" * 64, "-"])
    seqs = st.integers(0, 2**80) | st.sampled_from(EDGE_SEQS)
    return draw(st.one_of(
        st.tuples(st.just("session.events"), st.fixed_dictionaries(
            {"session_id": ids, "after_seq": seqs, "limit": st.integers(1, 100)})),
        st.tuples(st.just("session.list"), st.fixed_dictionaries(
            {"cursor": st.text(max_size=256), "limit": st.integers(1, 100)})),
        st.tuples(st.just("session.get"), st.fixed_dictionaries({"session_id": ids})),
        st.tuples(st.just("task.get"), st.fixed_dictionaries({"task_id": ids})),
    ))  # fmt: skip


FUZZ = settings(max_examples=150, deadline=None, database=None)


@pytest.mark.parametrize("action_type", ACTION_TYPES)
@FUZZ
@given(data=st.data())
def test_every_decoder_rejects_hostile_input_only_with_validation_failed(action_type, data):
    body, fmt, _kind = data.draw(hostile(action_type))
    # Any other exception (UnicodeDecodeError, RecursionError, ...) escapes and fails the test.
    decodes(action_type, body, fmt)


@pytest.mark.parametrize("action_type", ACTION_TYPES)
@pytest.mark.parametrize("fmt", list(WireFormat))
def test_every_decoder_rejects_the_classic_attacks(action_type, fmt):
    attacks = [nested(10_000, where) for where in
               ("top", "top_objects", "data", "field", "unknown", "msgpack")]  # fmt: skip
    attacks += [b"", b"\x00" * 64, b"\xff\xfe\xfd", b"null", b"1e99999", b'"' + b"\xff" * 8 + b'"']
    envelope = serialize(valid_envelope(action_type), fmt)
    attacks += [envelope[:cut] for cut in range(0, len(envelope), 7)]
    for bad in INVALID_UTF8:
        attacks.append(serialize({**valid_envelope(action_type), "user_id": "MARKER"}, fmt)
                       .replace(b"MARKER", (bad * 6)[:6]))  # fmt: skip
    for attack in attacks:
        with pytest.raises(ValidationFailed):
            decode(attack, action_type_of(action_type), fmt)
    assert decodes(action_type, envelope, fmt)


async def _state(js) -> dict[str, tuple[int, int]]:
    """(messages, last sequence) of every stream the orchestrator writes to."""
    state = {}
    for stream in ("KV_sessions", "KV_tasks", "SESSION_EVENTS", "CHAT_WORK"):
        info = await js.stream_info(stream)
        state[stream] = (info.state.messages, info.state.last_seq)
    # A work item is removed when its task ends: only new items count as a change there.
    state["CHAT_WORK"] = (0, state["CHAT_WORK"][1])
    return state


async def _send(nc, action_type: str, body: bytes, fmt: WireFormat):
    headers = {CONTENT_TYPE_HEADER: fmt.value} if fmt is WireFormat.MSGPACK else None
    return await nc.request(f"nooble4.orchestrator.{action_type}", body, timeout=10,
                            headers=headers)  # fmt: skip


def _assert_refusal(msg, fmt: WireFormat) -> None:
    headers = dict(msg.headers or {})
    assert ERROR_CODE_HEADER in headers and ERROR_HEADER in headers, (headers, msg.data[:200])
    reply_fmt = WireFormat.MSGPACK if headers.get(CONTENT_TYPE_HEADER) else WireFormat.JSON
    assert reply_fmt is fmt
    envelope = decode(msg.data, ErrorEnvelope, reply_fmt)
    code = ErrorCode(envelope.error.code)
    assert code in REFUSALS, envelope
    assert headers[ERROR_CODE_HEADER] == str(transport_for(code).http_status)
    assert envelope.error.message


def test_running_orchestrator_refuses_hostile_actions_without_changing_state(nats_server):
    runner = asyncio.Runner()
    stack = runner.run(start_stack(nats_server, max_message_bytes=MAX_BYTES))
    try:
        nc, js = stack.nc, stack.nc.jetstream()

        async def prepare() -> tuple[str, str]:
            started = await call(nc, "session.start", {"agent_id": "demo"})
            sid = started.data["session_id"]
            sent = await call(nc, "chat.send", {"session_id": sid, "content": "before"})
            task_id = sent.data["task_id"]

            async def settled() -> bool:
                log = (await call(nc, "session.events", {"session_id": sid})).data["events"]
                statuses = [e["event"].get("status") for e in log]
                return "completed" in statuses

            await wait_until(settled, message="the first chat to complete")
            return sid, task_id

        sid, task_id = runner.run(prepare())
        before = runner.run(_state(js))
        codes: list[str] = []

        async def one(action_type: str, body: bytes, fmt: WireFormat) -> None:
            msg = await _send(nc, action_type, body, fmt)
            _assert_refusal(msg, fmt)
            codes.append(decode(msg.data, ErrorEnvelope, fmt).error.code)
            assert await _state(js) == before

        async def answered(action_type: str, envelope: dict) -> None:
            # Well typed, at the edge of what the types allow: an answer or a refusal of the
            # request itself, never an error blamed on the service.
            msg = await _send(nc, action_type, serialize(envelope, WireFormat.JSON),
                              WireFormat.JSON)  # fmt: skip
            if ERROR_CODE_HEADER in (msg.headers or {}):
                error = decode(msg.data, ErrorEnvelope).error
                assert error.code in ("validation_error", "not_found"), error
                codes.append(error.code)
            else:
                codes.append("ok")
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
                for where in ("top", "data", "field", "unknown", "msgpack"):
                    runner.run(one("chat.send", nested(10_000, where), WireFormat.JSON))
                for seq in EDGE_SEQS:
                    envelope = valid_envelope("session.events", sid, task_id)
                    envelope["data"]["after_seq"] = seq
                    runner.run(answered("session.events", envelope))
                return
            action_type = data.draw(st.sampled_from(ACTION_TYPES))
            kind = data.draw(
                st.sampled_from(["hostile", "no_permission", "wrong_subject", "extreme"])
            )
            envelope = valid_envelope(action_type, sid, task_id)
            fmt = data.draw(st.sampled_from(list(WireFormat)))
            if kind == "hostile":
                body, fmt, family = data.draw(hostile(action_type, sid, task_id))
                # Oversized messages are refused whatever they hold; the rest must be malformed.
                assume(family == "huge" or not decodes(action_type, body, fmt))
            elif kind == "no_permission":
                # Well formed, but the context lacks what the action needs.
                others = [p for p in {s.permission for s in ACTIONS.values()}
                          if p != ACTIONS[action_type].permission]  # fmt: skip
                held = data.draw(st.lists(st.sampled_from(others), max_size=3))
                body = serialize({**envelope, "permissions": held}, fmt)
            elif kind == "wrong_subject":
                other = data.draw(st.sampled_from([t for t in ACTION_TYPES if t != action_type]))
                body = serialize({**envelope, "action_type": other}, fmt)
            else:
                action_type, query = data.draw(extreme_query(sid, task_id))
                envelope = {**valid_envelope(action_type, sid, task_id), "data": query}
                runner.run(answered(action_type, envelope))
                return
            runner.run(one(action_type, body, fmt))

        refused()
        assert len(codes) >= 100, len(codes)  # the property really ran against the server
        assert "validation_error" in codes and "forbidden" in codes
        assert "payload_too_large" in codes and "ok" in codes

        async def still_serving() -> None:
            sent = await call(nc, "chat.send", {"session_id": sid, "content": "after"})
            assert sent.error is None, sent.data
            done = {}

            async def completed() -> bool:
                got = await call(nc, "task.get", {"task_id": sent.data["task_id"]})
                done.update(got.data)
                return got.data["status"] == "completed"

            await wait_until(completed, message="a valid chat after the fuzzing")
            assert "after" in done["answer"]
            # Nothing left hanging in the action server (a reply precedes its task's end).
            await wait_until(lambda: stack.orchestrator.server.in_flight == 0, message="idle")

        runner.run(still_serving())
    finally:
        runner.run(stop_stack(stack))
        runner.close()
