"""Sessions expire: past their lifetime or idle timeout they close with a `session.closed` event."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

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
        got: list[dict] = []

        async def closed_when_read() -> bool:  # a read is not activity: it never touches
            got[:] = [(await call(stack.nc, "session.get", {"session_id": sid})).data]
            return got[0]["status"] == "closed"

        await wait_until(closed_when_read, timeout=10, interval=0.1, message="session closed")
        assert got[0]["close_reason"] == "expired"
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
    # Each message goes once half the idle timeout has passed since the stored last activity
    # (the clock is the condition): a loaded machine has 2 s to deliver it, and three of them
    # carry the session past one and a half idle timeouts.
    idle = 4.0
    stack = await start_stack(nats_server, session_idle_timeout=idle, session_touch_interval=0)
    try:
        sid = (await call(stack.nc, "session.start", {"agent_id": "demo"})).data["session_id"]
        kv = await stack.nc.jetstream().key_value("sessions")

        async def stored(field: str) -> datetime:
            record = json.loads((await kv.get(f"dev.alice.{sid}")).value)
            return datetime.fromisoformat(record[field])

        created = await stored("created_at")
        for _ in range(3):
            last = await stored("last_activity_at")
            halfway = last + timedelta(seconds=idle / 2)
            await wait_until(lambda h=halfway: datetime.now(UTC) >= h, 10, 0.05, "half idle")
            sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "still here"})
            assert sent.error is None, sent.data
            assert await stored("last_activity_at") > last  # the message was activity
        assert await stored("last_activity_at") >= created + timedelta(seconds=1.5 * idle)
        got = await call(stack.nc, "session.get", {"session_id": sid})
        assert got.data["status"] == "open"
    finally:
        await stop_stack(stack)
