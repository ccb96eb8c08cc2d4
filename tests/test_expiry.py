"""Sessions expire: past their lifetime or idle timeout they close with a `session.closed` event."""

from __future__ import annotations

import asyncio

from conftest import wait_until
from support.calls import call
from support.stack import start_stack, stop_stack


async def closed_events(nc, sid) -> list[dict]:
    page = await call(nc, "session.events", {"session_id": sid})
    return [e["event"] for e in page.data["events"] if e["event"]["type"] == "session.closed"]


async def test_idle_session_is_closed_on_access_with_reason_expired(nats_server):
    stack = await start_stack(nats_server, session_idle_timeout=0.3, session_touch_interval=0)
    try:
        sid = (await call(stack.nc, "session.start", {"agent_id": "demo"})).data["session_id"]
        await asyncio.sleep(0.5)
        got = await call(stack.nc, "session.get", {"session_id": sid})
        assert got.data["status"] == "closed" and got.data["close_reason"] == "expired"
        sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "late"})
        assert sent.code == "conflict"
        assert [e["reason"] for e in await closed_events(stack.nc, sid)] == ["expired"]
    finally:
        await stop_stack(stack)


async def test_sweeper_closes_sessions_past_their_lifetime_without_any_access(nats_server):
    stack = await start_stack(nats_server, session_ttl=0.5, session_sweep_interval=0.2)
    try:
        sid = (await call(stack.nc, "session.start", {"agent_id": "demo"})).data["session_id"]
        kv = await stack.nc.jetstream().key_value("sessions")

        async def closed_in_kv() -> bool:
            return b'"status":"closed"' in (await kv.get(f"dev.alice.{sid}")).value

        await wait_until(closed_in_kv, timeout=10, message="the sweeper to close the session")
        assert len(await closed_events(stack.nc, sid)) == 1
    finally:
        await stop_stack(stack)


async def test_activity_keeps_a_session_open(nats_server):
    # Activity spans twice the idle timeout; each gap leaves a wide margin for a slow machine.
    stack = await start_stack(nats_server, session_idle_timeout=2.0, session_touch_interval=0)
    try:
        sid = (await call(stack.nc, "session.start", {"agent_id": "demo"})).data["session_id"]
        for _ in range(6):
            await asyncio.sleep(0.7)
            sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "still here"})
            assert sent.error is None, sent.data
        got = await call(stack.nc, "session.get", {"session_id": sid})
        assert got.data["status"] == "open"
    finally:
        await stop_stack(stack)
