"""Sessions over the bus: every action's happy path and every error code bad input can reach."""

from __future__ import annotations

import json

import msgspec
import pytest
from support.calls import call, client_of

from orchestrator.codecs.errors import Conflict, NotFound
from orchestrator.codecs.records import SessionStatus

pytestmark = pytest.mark.asyncio


async def start(stack, user="alice", tenant="dev", **data):
    reply = await call(
        stack.nc, "session.start", {"agent_id": "demo", **data}, tenant=tenant, user=user
    )
    assert reply.error is None, reply.data
    return reply.data


async def test_session_start_get_list_close_round_trip(stack):
    client = client_of(stack)
    started = await client.start_session("demo", {"topic": "billing"})
    sid = started.session_id
    assert started.status is SessionStatus.OPEN and started.agent_id == "demo"
    assert started.metadata == {"topic": "billing"}

    assert (await client.get_session(sid)).session_id == sid
    listed = await client.list_sessions()
    assert [s.session_id for s in listed.items] == [sid]

    closed = await client.close_session(sid)
    assert closed.status is SessionStatus.CLOSED and closed.close_reason == "closed by user"
    assert (await client.get_session(sid)).status is SessionStatus.CLOSED


async def test_session_list_pages_with_cursor_newest_first(stack):
    client = client_of(stack)
    ids = [(await client.start_session("demo")).session_id for _ in range(5)]
    first = await client.list_sessions(limit=2)
    second = await client.list_sessions(limit=2, cursor=first.next_cursor)
    third = await client.list_sessions(limit=2, cursor=second.next_cursor)
    seen = [s.session_id for page in (first, second, third) for s in page.items]
    assert seen == list(reversed(ids))
    assert third.next_cursor is None


async def test_session_update_merges_metadata(stack):
    client = client_of(stack)
    sid = (await client.start_session("demo", {"a": "1", "b": "2"})).session_id
    updated = await client.update_session(sid, {"b": "", "c": "3"})
    assert updated.metadata == {"a": "1", "c": "3"}


async def test_msgpack_request_gets_msgpack_reply(stack):
    body = msgspec.msgpack.encode(
        {"tenant_id": "dev", "user_id": "alice", "data": {"agent_id": "demo"}}
    )
    msg = await stack.nc.request(
        "nooble4.orchestrator.session.start", body, headers={"Content-Type": "application/msgpack"}
    )
    assert msg.headers["Content-Type"] == "application/msgpack"
    assert msgspec.msgpack.decode(msg.data)["status"] == "open"


async def sessions_snapshot(stack) -> dict:
    kv = await stack.nc.jetstream().key_value("sessions")
    try:
        keys = await kv.keys()
    except Exception:  # noqa: BLE001 - NoKeysError: an empty bucket
        return {}
    return {k: (await kv.get(k)).value for k in keys}


@pytest.mark.parametrize(
    ("action", "body", "code", "status"),
    [
        ("session.start", b"{not json", "validation_error", "400"),
        ("session.start", b'{"tenant_id":"dev","user_id":"alice","data":{"agent_id":5}}',
         "validation_error", "400"),
        ("session.start", b'{"tenant_id":"dev","user_id":"alice"}', "validation_error", "400"),
        ("session.start", b'{"tenant_id":"dev","user_id":"alice","data":{"agent_id":"demo"},"x":1}',
         "validation_error", "400"),
        ("session.start", b'{"tenant_id":"dev","user_id":"alice","action_type":"session.close",'
         b'"data":{"agent_id":"demo"}}', "validation_error", "400"),
        ("session.start", b'{"tenant_id":"../x","user_id":"alice","data":{"agent_id":"demo"}}',
         "validation_error", "400"),
        ("session.start", b'\xff\xfe\xfd', "validation_error", "400"),
        ("session.start", b'{"tenant_id":"dev","user_id":"alice","data":{"agent_id":"nope"}}',
         "not_found", "404"),
        ("session.start", b'{"tenant_id":"other","user_id":"bob","data":{"agent_id":"demo"}}',
         "forbidden", "403"),
        ("session.start", b'{"tenant_id":"dev","user_id":"alice","permissions":["tasks:read"],'
         b'"data":{"agent_id":"demo"}}', "forbidden", "403"),
        ("session.get", b'{"tenant_id":"dev","user_id":"alice","data":{"session_id":"missing"}}',
         "not_found", "404"),
    ],
)  # fmt: skip
async def test_bad_input_gets_typed_error_and_changes_nothing(stack, action, body, code, status):
    before = await sessions_snapshot(stack)
    reply = await call(stack.nc, action, body)
    assert reply.code == code, reply.data
    assert reply.headers["Nats-Service-Error-Code"] == status
    assert reply.headers["Nats-Service-Error"]
    assert await sessions_snapshot(stack) == before


async def test_oversized_payload_is_rejected(nats_server):
    from support.stack import start_stack, stop_stack

    stack = await start_stack(nats_server, max_message_bytes=2048)
    try:
        big = json.dumps(
            {
                "tenant_id": "dev",
                "user_id": "alice",
                "data": {"agent_id": "demo", "metadata": {"k": "x" * 4000}},
            }
        ).encode()
        reply = await call(stack.nc, "session.start", big)
        assert reply.code == "payload_too_large"
        assert reply.headers["Nats-Service-Error-Code"] == "413"
    finally:
        await stop_stack(stack)


async def test_foreign_tenant_and_user_cannot_see_or_close_a_session(stack):
    sid = (await client_of(stack).start_session("demo")).session_id
    for tenant, user in (("other", "alice"), ("dev", "mallory")):
        stranger = client_of(stack, tenant, user)
        with pytest.raises(NotFound):
            await stranger.get_session(sid)
        with pytest.raises(NotFound):
            await stranger.close_session(sid)
        assert (await stranger.list_sessions()).items == []
    assert (await client_of(stack).get_session(sid)).status is SessionStatus.OPEN


async def test_closed_session_refuses_chat_and_updates(stack):
    client = client_of(stack)
    sid = (await client.start_session("demo")).session_id
    await client.close_session(sid)
    with pytest.raises(Conflict):
        await client.send(sid, "hello")
    with pytest.raises(Conflict):
        await client.update_session(sid, {"a": "b"})


async def test_an_unreadable_stored_session_is_left_out_of_the_list_not_fatal(stack):
    kept = (await call(stack.nc, "session.start", {"agent_id": "demo"})).data["session_id"]
    kv = await stack.nc.jetstream().key_value("sessions")
    await kv.put("dev.alice.zzzz-garbled", b"not json at all")
    listed = await call(stack.nc, "session.list", {})
    assert listed.error is None, listed.data
    assert [item["session_id"] for item in listed.data["items"]] == [kept]
