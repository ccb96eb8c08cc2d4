"""Conversation semantics over the bus: ordered turns, busy policies, idempotent send, cancel that
keeps the partial answer, pause for a human. The execution service is tests/agents/turn_agent.py,
a separate process."""

from __future__ import annotations

import os
import signal

import nats
import pytest
from conftest import wait_until
from support.calls import call, put_agent
from support.chat_load import session_log
from support.programs import turn_agent
from support.stack import start_stack, stop_stack
from turns_helpers import (
    busy_agent,
    check_one_turn_at_a_time,
    last_events_are_final,
    of_task,
    send,
    status_of,
)

from orchestrator.codecs.agent_configs import BusyPolicy
from orchestrator.codecs.records import QueuedTurn
from orchestrator.service.store.ids import utcnow
from orchestrator.service.store.streams import ensure_resources


@pytest.fixture
async def turns(nats_server, tmp_path):
    """The orchestrator in-process (no built-in agent) and the turn agent as a process."""
    stack = await start_stack(nats_server, agent=None, input_timeout=60.0)
    for policy in BusyPolicy:
        await put_agent(stack.nc, policy.value, busy_agent(policy))
    async with turn_agent(nats_server.url, tmp_path / "agent.log"):
        yield stack
    await stop_stack(stack)


async def session(nc, agent_id: str = "enqueue", user: str = "alice") -> str:
    reply = await call(nc, "session.start", {"agent_id": agent_id}, user=user)
    assert reply.error is None, reply.data
    return reply.data["session_id"]


async def until_status(nc, task_id: str, wanted: str, timeout: float = 15.0) -> None:
    async def reached() -> bool:
        return await status_of(nc, task_id) == wanted

    await wait_until(reached, timeout=timeout, message=f"task {task_id} {wanted}")


async def until_chunks(nc, sid: str, task_id: str, count: int) -> None:
    async def streamed() -> bool:
        log = await session_log(nc, "alice", sid)
        return sum(e["type"] == "chat.chunk" for e in of_task(log, task_id)) >= count

    await wait_until(streamed, message=f"{count} chunks of {task_id}")


async def test_turns_of_a_session_run_one_at_a_time_in_acceptance_order(turns):
    nc = turns.nc
    sid, other = await session(nc), await session(nc)
    # Each message after the previous one's ack (not its answer): five turns queue up.
    sent = [await send(nc, sid, f"m{i}") for i in range(5)]
    by_seq = [s["task_id"] for s in sent]
    assert [s["seq"] for s in sent] == sorted(s["seq"] for s in sent)
    beside = await send(nc, other, "other")
    for task_id in by_seq:
        await until_status(nc, task_id, "completed")
    await until_status(nc, beside["task_id"], "completed")
    log = await session_log(nc, "alice", sid)
    assert check_one_turn_at_a_time(log) == by_seq
    for task_id in by_seq:
        last_events_are_final(log, task_id)
    # The other session did not wait for this one: its turn ended before this one's last began.
    other_log = await session_log(nc, "alice", other)
    other_done = next(r["seq"] for r in other_log if r["event"].get("status") == "completed")
    last_start = next(
        r["seq"] for r in log
        if r["event"].get("task_id") == by_seq[-1] and r["event"].get("status") == "running"
    )  # fmt: skip
    assert other_done < last_start


async def test_reject_policy_refuses_a_second_turn_and_stores_nothing(turns):
    nc = turns.nc
    sid = await session(nc, "reject")
    first = await send(nc, sid, "first")
    refused = await call(nc, "chat.send", {"session_id": sid, "content": "second"})
    assert refused.code == "conflict" and refused.error["details"]["task_id"] == first["task_id"]
    await until_status(nc, first["task_id"], "completed")
    log = await session_log(nc, "alice", sid)
    assert [e["event"]["content"] for e in log if e["event"]["type"] == "message.accepted"] == [
        "first"
    ]
    later = await send(nc, sid, "after")
    await until_status(nc, later["task_id"], "completed")


async def test_interrupt_policy_cancels_the_running_turn_keeping_its_partial_answer(turns):
    nc = turns.nc
    sid = await session(nc, "interrupt")
    first = await send(nc, sid, "/slow first")
    await until_chunks(nc, sid, first["task_id"], 2)
    second = await send(nc, sid, "second")
    await until_status(nc, first["task_id"], "cancelled")
    await until_status(nc, second["task_id"], "completed")
    log = await session_log(nc, "alice", sid)
    assert check_one_turn_at_a_time(log) == [first["task_id"], second["task_id"]]
    last_events_are_final(log, first["task_id"])
    last_events_are_final(log, second["task_id"])
    partial = of_task(log, first["task_id"])[-2]
    assert partial["partial"] is True
    assert partial["content"].startswith("/slow first:0 /slow first:1 ")
    task = await call(nc, "task.get", {"task_id": first["task_id"]})
    assert task.data["answer"] == partial["content"]


async def test_repeated_send_id_returns_the_first_task_and_stores_nothing(turns):
    nc = turns.nc
    sid = await session(nc)
    first = await send(nc, sid, "once", action_id="client-1")
    again = await send(nc, sid, "once", action_id="client-1")
    assert again == first
    other_session = await session(nc)
    elsewhere = await send(nc, other_session, "once", action_id="client-1")
    assert elsewhere["task_id"] != first["task_id"]  # ids are scoped to the session
    await until_status(nc, first["task_id"], "completed")
    after = await send(nc, sid, "once", action_id="client-1")
    assert after == first
    log = await session_log(nc, "alice", sid)
    assert sum(e["event"]["type"] == "message.accepted" for e in log) == 1
    assert sum(e["event"]["type"] == "chat.response" for e in log) == 1


async def test_a_send_retried_after_a_stalled_nats_runs_once(turns, nats_server):
    nc = turns.nc
    sid = await session(nc)
    os.kill(nats_server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await call(nc, "chat.send", {"session_id": sid, "content": "stalled"},
                       action_id="retry-1", timeout=1.0)  # fmt: skip
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)
    retried = None
    for _ in range(50):  # the client's retries with the same id, until one is answered
        try:
            retried = await send(nc, sid, "stalled", action_id="retry-1")
            break
        except nats.errors.TimeoutError:
            continue
    assert retried is not None
    await until_status(nc, retried["task_id"], "completed")
    log = await session_log(nc, "alice", sid)
    assert [e["event"]["task_id"] for e in log if e["event"]["type"] == "message.accepted"] == [
        retried["task_id"]
    ]
    assert sum(e["event"]["type"] == "chat.response" for e in log) == 1


async def test_a_send_repeated_after_an_orchestrator_restart_returns_the_same_task(
    nats_server, tmp_path
):
    stack = await start_stack(nats_server, agent=None)
    async with turn_agent(nats_server.url, tmp_path / "agent.log"):
        try:
            sid = await session(stack.nc, "demo")
            first = await send(stack.nc, sid, "before restart", action_id="restart-1")
        finally:
            await stop_stack(stack)
        stack = await start_stack(nats_server, agent=None)
        try:
            again = await send(stack.nc, sid, "before restart", action_id="restart-1")
            assert again == first
            await until_status(stack.nc, first["task_id"], "completed")
            log = await session_log(stack.nc, "alice", sid)
            assert sum(e["event"]["type"] == "message.accepted" for e in log) == 1
        finally:
            await stop_stack(stack)


async def test_cancel_of_a_queued_turn_keeps_it_from_running(turns):
    nc = turns.nc
    sid = await session(nc)
    first = await send(nc, sid, "first")
    queued = await send(nc, sid, "queued")
    third = await send(nc, sid, "third")
    cancelled = await call(nc, "task.cancel", {"task_id": queued["task_id"]})
    assert cancelled.data["status"] == "cancelled"
    await until_status(nc, third["task_id"], "completed")
    log = await session_log(nc, "alice", sid)
    assert check_one_turn_at_a_time(log) == [first["task_id"], third["task_id"]]
    last_events_are_final(log, queued["task_id"])
    assert [e["type"] for e in of_task(log, queued["task_id"])] == [
        "message.accepted", "chat.response", "task.status"
    ]  # fmt: skip


async def test_cancel_before_any_execution_service_answered(nats_server):
    stack = await start_stack(nats_server, agent=None, execution_max_retries=100)
    try:
        sid = await session(stack.nc, "demo")
        sent = await send(stack.nc, sid, "nobody answers")
        await until_status(stack.nc, sent["task_id"], "running")
        cancelled = await call(stack.nc, "task.cancel", {"task_id": sent["task_id"]})
        assert cancelled.data["status"] == "cancelled"
        await wait_until(lambda: stack.orchestrator.worker.running == 0, message="runner done")
        log = await session_log(stack.nc, "alice", sid)
        last_events_are_final(log, sent["task_id"])
        assert of_task(log, sent["task_id"])[-2]["content"] == ""
    finally:
        await stop_stack(stack)


async def test_cancel_mid_stream_keeps_the_streamed_text_as_a_partial_answer(turns):
    nc = turns.nc
    sid = await session(nc)
    sent = await send(nc, sid, "/slow long")
    await until_chunks(nc, sid, sent["task_id"], 3)
    await call(nc, "task.cancel", {"task_id": sent["task_id"]})
    follow = await send(nc, sid, "next")
    await until_status(nc, follow["task_id"], "completed")
    log = await session_log(nc, "alice", sid)
    last_events_are_final(log, sent["task_id"])
    answer = (await call(nc, "task.get", {"task_id": sent["task_id"]})).data["answer"]
    assert answer.startswith("/slow long:0 /slow long:1 /slow long:2 ")


async def test_input_expiry_times_the_task_out_and_the_next_turn_runs(nats_server, tmp_path):
    stack = await start_stack(nats_server, agent=None, input_timeout=1.0)
    async with turn_agent(nats_server.url, tmp_path / "agent.log"):
        try:
            sid = await session(stack.nc, "demo")
            asking = await send(stack.nc, sid, "/ask approve")
            await until_status(stack.nc, asking["task_id"], "input_required")
            behind = await send(stack.nc, sid, "behind")
            assert await status_of(stack.nc, behind["task_id"]) == "queued"
            await until_status(stack.nc, asking["task_id"], "timed_out")
            await until_status(stack.nc, behind["task_id"], "completed")
            log = await session_log(stack.nc, "alice", sid)
            assert check_one_turn_at_a_time(log) == [asking["task_id"], behind["task_id"]]
            last_events_are_final(log, asking["task_id"])
        finally:
            await stop_stack(stack)


async def test_cancel_while_waiting_for_input(turns):
    nc = turns.nc
    sid = await session(nc)
    asking = await send(nc, sid, "/ask approve")
    await until_status(nc, asking["task_id"], "input_required")
    await call(nc, "task.cancel", {"task_id": asking["task_id"]})
    nxt = await send(nc, sid, "next")
    await until_status(nc, nxt["task_id"], "completed")
    log = await session_log(nc, "alice", sid)
    last_events_are_final(log, asking["task_id"])
    assert of_task(log, asking["task_id"])[-2]["content"] == "may I? "


async def test_a_turn_left_by_a_crashed_intake_does_not_block_the_session(nats_server, tmp_path):
    # An intake that died after queueing its turn, before its task record: the entry is there,
    # the record never comes. The session's next message still runs, after the orphan grace.
    stack = await start_stack(nats_server, agent=None, task_orphan_grace=1.0)
    async with turn_agent(nats_server.url, tmp_path / "agent.log"):
        try:
            sid = await session(stack.nc, "demo")
            ghost = QueuedTurn(task_id="0" * 26, session_id=sid, at=utcnow())
            await stack.orchestrator.turns.reserve("dev", "alice", ghost, BusyPolicy.ENQUEUE)
            sent = await send(stack.nc, sid, "after the crash")
            await until_status(stack.nc, sent["task_id"], "completed")
            # The record says completed before the worker takes the turn out of the queue (the
            # final state is written first, then the turn ends): wait for that end, the ghost
            # gone with it.
            turns = stack.orchestrator.turns

            async def queue_empty() -> bool:
                return (await turns.read("dev", "alice")).turns == []

            await wait_until(queue_empty, message="the turn queue to empty")
            log = await session_log(stack.nc, "alice", sid)
            last_events_are_final(log, sent["task_id"])
        finally:
            await stop_stack(stack)


async def test_a_cancel_cut_off_after_its_state_write_is_completed_by_the_worker(turns):
    # What a cancel leaves when its instance dies right after the state write: the task record
    # says cancelled, its events were never written, nobody was told. The worker completes it.
    nc, tasks = turns.nc, turns.orchestrator.tasks
    sid = await session(nc)
    running = await send(nc, sid, "first")
    queued = await send(nc, sid, "second")
    third = await send(nc, sid, "third")
    await until_chunks(nc, sid, running["task_id"], 2)
    for task_id in (running["task_id"], queued["task_id"]):
        found = await tasks.get("dev", "alice", task_id)
        await tasks.cancel(found.value, utcnow(), found)
    await until_status(nc, third["task_id"], "completed")
    log = await session_log(nc, "alice", sid)
    assert check_one_turn_at_a_time(log) == [running["task_id"], third["task_id"]]
    for task_id in (running["task_id"], queued["task_id"]):
        last_events_are_final(log, task_id)
        assert of_task(log, task_id)[-1]["status"] == "cancelled"


async def test_a_send_refused_because_its_message_could_not_be_stored_leaves_no_turn(nats_server):
    # The session events stream answers nobody (as in a leader election): the send is refused
    # and takes its own turn out of the queue, instead of holding the session for the orphan
    # grace; a retry with the same id, once the stream is back, runs the turn once.
    stack = await start_stack(nats_server, task_orphan_grace=600.0)
    js = stack.nc.jetstream()
    try:
        sid = await session(stack.nc, "demo")
        await js.delete_stream(stack.settings.events_stream)
        refused = await call(stack.nc, "chat.send", {"session_id": sid, "content": "hi"},
                             action_id="client-1")  # fmt: skip
        assert refused.code == "unavailable", refused.data
        assert (await stack.orchestrator.turns.read("dev", "alice")).turns == []

        await ensure_resources(js, stack.settings, stack.subjects)
        sent = await send(stack.nc, sid, "hi", action_id="client-1")
        assert (await send(stack.nc, sid, "again")) is not None  # not held behind a leftover
        await until_status(stack.nc, sent["task_id"], "completed", timeout=30)
        log = await session_log(stack.nc, "alice", sid)
        assert sum(e["event"]["type"] == "message.accepted" for e in log) == 2
    finally:
        await stop_stack(stack)
