"""A session's close and its `session.closed` event are never split.

The event stream is made to refuse new messages (a real JetStream limit: discard new at the
current count), so the close's state write succeeds and its event append fails; then a retry,
or another instance's sweep after the first one was killed with -9, completes the close.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json

from conftest import wait_until
from nats.js.api import DiscardPolicy
from support.calls import call, put_agent, wait_for_service
from support.processes import OrchestratorProcess
from support.stack import start_stack, stop_stack

from orchestrator.codecs.agent_configs import AgentConfig

EVENTS = "SESSION_EVENTS"


@contextlib.asynccontextmanager
async def events_refused(nc):
    """While inside, the session event stream refuses every new event."""
    js = nc.jetstream()
    info = await js.stream_info(EVENTS)
    original = info.config
    full = dataclasses.replace(original, discard=DiscardPolicy.NEW, max_msgs=info.state.messages)
    await js.update_stream(full)
    try:
        yield
    finally:
        await js.update_stream(original)


async def closed_events(nc, sid: str, user: str = "alice") -> list[dict]:
    page = await call(nc, "session.events", {"session_id": sid}, user=user)
    assert page.error is None, page.data
    return [e["event"] for e in page.data["events"] if e["event"]["type"] == "session.closed"]


async def stored_session(nc, sid: str, user: str = "alice") -> dict:
    kv = await nc.jetstream().key_value("sessions")
    return json.loads((await kv.get(f"dev.{user}.{sid}")).value)


async def test_a_retried_close_writes_the_event_a_failed_append_left_out(stack):
    nc = stack.nc
    sid = (await call(nc, "session.start", {"agent_id": "demo"})).data["session_id"]
    async with events_refused(nc):
        failed = await call(nc, "session.close", {"session_id": sid, "reason": "done"})
        assert failed.code == "unavailable", failed.data
    assert (await stored_session(nc, sid))["status"] == "closed"
    assert await closed_events(nc, sid) == []

    retried = await call(nc, "session.close", {"session_id": sid, "reason": "done"})
    assert retried.error is None, retried.data
    assert [e["reason"] for e in await closed_events(nc, sid)] == ["done"]
    assert not (await stored_session(nc, sid)).get("close_event_pending")
    # A further close changes nothing and writes no second event.
    again = await call(nc, "session.close", {"session_id": sid})
    assert again.error is None and len(await closed_events(nc, sid)) == 1


async def test_a_close_cut_short_by_a_kill_is_finished_by_another_instance(
    nats_server, nc, tmp_path
):
    first = OrchestratorProcess(nats_server.url, tmp_path / "first.log").start()
    second = None
    try:
        await wait_for_service(nc)
        await put_agent(nc, "demo", AgentConfig(tenant_id="dev", name="Demo"))
        sid = (await call(nc, "session.start", {"agent_id": "demo"})).data["session_id"]
        async with events_refused(nc):
            failed = await call(nc, "session.close", {"session_id": sid, "reason": "bye"})
            assert failed.code == "unavailable", failed.data
            first.kill()  # dies with the state written and the event not
        assert (await stored_session(nc, sid))["close_event_pending"] is True

        second = await start_stack(nats_server, agent=None, session_sweep_interval=0.1)

        async def closed() -> bool:
            return [e["reason"] for e in await closed_events(nc, sid)] == ["bye"]

        await wait_until(closed, timeout=15, message="the sweep to write session.closed")
        await wait_until(
            lambda: _pending_cleared(nc, sid), timeout=10, message="the pending flag to clear"
        )
    finally:
        first.kill()
        if second is not None:
            await stop_stack(second)


async def _pending_cleared(nc, sid: str) -> bool:
    return not (await stored_session(nc, sid)).get("close_event_pending")
