"""Chat over NATS: chat.send to a finished task with its answer in the session's event stream."""

from __future__ import annotations

import nats
import nats.js.errors
from conftest import wait_until
from support.calls import call, put_agent
from support.stack import start_stack, stop_stack

from orchestrator.codecs.agent_configs import Access, AgentConfig
from orchestrator.service.runtime.settings import AgentSettings


async def new_session(nc, tenant="dev", user="alice") -> str:
    reply = await call(nc, "session.start", {"agent_id": "demo"}, tenant=tenant, user=user)
    assert reply.error is None, reply.data
    return reply.data["session_id"]


async def task_done(nc, task_id, tenant="dev", user="alice", timeout=15.0) -> dict:
    state: dict = {}

    async def finished() -> bool:
        reply = await call(nc, "task.get", {"task_id": task_id}, tenant=tenant, user=user)
        state.update(reply.data)
        return reply.data.get("status") in ("completed", "failed", "timed_out", "cancelled")

    await wait_until(finished, timeout=timeout, message=f"task {task_id} to finish")
    return state


async def events(nc, sid, after=0, tenant="dev", user="alice") -> list[dict]:
    reply = await call(nc, "session.events", {"session_id": sid, "after_seq": after},
                       tenant=tenant, user=user)  # fmt: skip
    assert reply.error is None, reply.data
    return reply.data["events"]


async def test_chat_message_becomes_completed_task_with_streamed_answer(stack):
    sid = await new_session(stack.nc)
    sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "hello there"})
    assert sent.error is None, sent.data
    assert sent.data["status"] == "queued" and sent.data["seq"] > 0
    task = await task_done(stack.nc, sent.data["task_id"])
    assert task["status"] == "completed"
    assert "hello there" in task["answer"]
    assert task["attempts"] == 1

    log = await events(stack.nc, sid)
    types = [e["event"]["type"] for e in log]
    assert types[0] == "session.started"
    assert types[1] == "message.accepted"
    assert types.index("task.status") < types.index("chat.chunk") < types.index("chat.response")
    chunks = [e["event"] for e in log if e["event"]["type"] == "chat.chunk"]
    indices = [c["index"] for c in chunks]
    assert indices[0] == 0 and indices == sorted(set(indices))
    assert "".join(c["content"] for c in chunks) == task["answer"]
    statuses = [e["event"]["status"] for e in log if e["event"]["type"] == "task.status"]
    assert statuses == ["running", "completed"]
    seqs = [e["seq"] for e in log]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_events_replay_from_a_sequence_number(stack):
    sid = await new_session(stack.nc)
    sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "replay me"})
    await task_done(stack.nc, sent.data["task_id"])
    full = await events(stack.nc, sid)
    middle = full[2]["seq"]
    tail = await events(stack.nc, sid, after=middle)
    assert tail == full[3:]
    page = await call(stack.nc, "session.events", {"session_id": sid, "after_seq": 0, "limit": 2})
    assert len(page.data["events"]) == 2 and page.data["more"] is True
    assert page.data["recovered"] is True


async def test_foreign_tenant_cannot_send_to_or_read_a_session_or_task(stack):
    sid = await new_session(stack.nc)
    sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "mine"})
    task_id = sent.data["task_id"]
    for tenant, user in (("evil", "alice"), ("dev", "mallory")):
        other = await call(stack.nc, "chat.send", {"session_id": sid, "content": "x"},
                           tenant=tenant, user=user)  # fmt: skip
        assert other.code == "not_found"
        assert (
            await call(stack.nc, "task.get", {"task_id": task_id}, tenant=tenant, user=user)
        ).code == "not_found"
        assert (
            await call(stack.nc, "task.cancel", {"task_id": task_id}, tenant=tenant, user=user)
        ).code == "not_found"
        assert (
            await call(stack.nc, "session.events", {"session_id": sid}, tenant=tenant, user=user)
        ).code == "not_found"


async def test_execution_absent_fails_task_with_upstream_unavailable(nats_server):
    stack = await start_stack(nats_server, agent=None, execution_max_retries=2)
    try:
        sid = await new_session(stack.nc)
        sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "anyone?"})
        task = await task_done(stack.nc, sent.data["task_id"])
        assert task["status"] == "failed"
        assert task["error"]["code"] == "upstream_unavailable"
    finally:
        await stop_stack(stack)


async def test_slow_execution_past_every_retry_ends_timed_out(nats_server):
    stack = await start_stack(
        nats_server, agent=AgentSettings(chunk_delay=0.0, delay=5.0), execution_timeout=0.2,
        execution_max_retries=1,
    )  # fmt: skip
    try:
        sid = await new_session(stack.nc)
        sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "too slow"})
        task = await task_done(stack.nc, sent.data["task_id"])
        assert task["status"] == "timed_out" and task["error"]["code"] == "timeout"
    finally:
        await stop_stack(stack)


async def test_failing_execution_is_retried_a_bounded_number_of_times(nats_server):
    stack = await start_stack(
        nats_server, agent=AgentSettings(chunk_delay=0.0, fail_always=True), execution_max_retries=2
    )
    try:
        sid = await new_session(stack.nc)
        sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "fail"})
        task = await task_done(stack.nc, sent.data["task_id"])
        assert task["status"] == "failed"
        assert task["error"]["code"] == "upstream_unavailable"
        assert stack.agent.stats.requests == 3
    finally:
        await stop_stack(stack)


async def test_flaky_execution_succeeds_after_retries(nats_server):
    stack = await start_stack(nats_server, agent=AgentSettings(chunk_delay=0.0, fail_first=2))
    try:
        sid = await new_session(stack.nc)
        sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "flaky"})
        task = await task_done(stack.nc, sent.data["task_id"])
        assert task["status"] == "completed"
    finally:
        await stop_stack(stack)


async def test_cancel_stops_a_running_task(nats_server):
    stack = await start_stack(nats_server, agent=AgentSettings(chunk_delay=0.5, chunks=20))
    try:
        sid = await new_session(stack.nc)
        sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "long answer"})
        task_id = sent.data["task_id"]

        async def running() -> bool:
            reply = await call(stack.nc, "task.get", {"task_id": task_id})
            return reply.data["status"] == "running"

        await wait_until(running, message="task running")
        cancelled = await call(stack.nc, "task.cancel", {"task_id": task_id})
        assert cancelled.data["status"] == "cancelled"
        await wait_until(lambda: stack.orchestrator.worker.running == 0, message="runner stopped")
        final = await call(stack.nc, "task.get", {"task_id": task_id})
        assert final.data["status"] == "cancelled"
        again = await call(stack.nc, "task.cancel", {"task_id": task_id})
        assert again.code == "conflict"
        log = await events(stack.nc, sid)
        mine = [e["event"] for e in log if e["event"].get("task_id") == task_id]
        # The text so far is kept as a partial answer, and the status is the task's last event.
        assert mine[-2]["type"] == "chat.response" and mine[-2]["partial"] is True
        assert mine[-1]["type"] == "task.status" and mine[-1]["status"] == "cancelled"
    finally:
        await stop_stack(stack)


async def test_unfinished_turns_per_user_are_bounded(nats_server):
    stack = await start_stack(
        nats_server, agent=AgentSettings(chunk_delay=0.0, delay=3.0), max_inflight_tasks_per_user=2
    )
    try:
        sid = await new_session(stack.nc)
        accepted = [await call(stack.nc, "chat.send", {"session_id": sid, "content": str(i)})
                    for i in range(2)]  # fmt: skip
        assert all(r.error is None for r in accepted)

        async def first_running() -> bool:
            task = await call(stack.nc, "task.get", {"task_id": accepted[0].data["task_id"]})
            return task.data["status"] == "running"

        # One turn runs, the next waits behind it: both count toward the bound.
        await wait_until(first_running, message="first turn running")
        second = await call(stack.nc, "task.get", {"task_id": accepted[1].data["task_id"]})
        assert second.data["status"] == "queued"
        before = await events(stack.nc, sid)
        refused = await call(stack.nc, "chat.send", {"session_id": sid, "content": "third"})
        assert refused.code == "rate_limited"
        assert refused.headers["Nats-Service-Error-Code"] == "429"
        assert await events(stack.nc, sid) == before
        # Another user is not affected.
        bob_sid = await new_session(stack.nc, user="bob")
        bob = await call(
            stack.nc, "chat.send", {"session_id": bob_sid, "content": "hi"}, user="bob"
        )
        assert bob.error is None
    finally:
        await stop_stack(stack)


async def test_agent_config_change_reaches_a_running_instance(stack):
    # tenant-only agent: another tenant is refused until the config makes it public
    refused = await call(stack.nc, "session.start", {"agent_id": "demo"}, tenant="acme", user="zed")
    assert refused.code == "forbidden"
    await put_agent(stack.nc, "demo", AgentConfig(tenant_id="dev", access=Access.PUBLIC))
    await wait_until(
        lambda: stack.orchestrator.agents.cached("demo").access is Access.PUBLIC,
        timeout=10.0, message="config update in the cache",
    )  # fmt: skip
    allowed = await call(stack.nc, "session.start", {"agent_id": "demo"}, tenant="acme", user="zed")
    assert allowed.error is None


async def test_agent_config_watch_survives_nats_server_restart(stack):
    stack.server.restart()
    await wait_until(lambda: stack.nc.is_connected, message="client reconnected")

    async def stored() -> bool:
        try:
            await put_agent(stack.nc, "demo", AgentConfig(tenant_id="dev", name="after restart"))
        except (nats.errors.TimeoutError, nats.js.errors.APIError):
            return False  # JetStream still recovering its store
        return True

    await wait_until(stored, timeout=10.0, message="JetStream back")
    await wait_until(
        lambda: stack.orchestrator.agents.cached("demo").name == "after restart",
        timeout=5.0, message="config update after restart",
    )  # fmt: skip
