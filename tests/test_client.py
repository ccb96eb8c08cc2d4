"""The Python client `orchestrator.client` against a real orchestrator and agent on a real NATS."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from conftest import wait_until
from support.calls import call, connect_client
from tcp_proxy import TcpProxy

from orchestrator.client import OrchestratorClient
from orchestrator.codecs.actions import EventRecord
from orchestrator.codecs.errors import Forbidden, NotFound, ValidationFailed
from orchestrator.codecs.events import MessageAccepted, SessionStarted, TaskStatusChanged
from orchestrator.codecs.records import SessionStatus, TaskStatus
from orchestrator.codecs.wire import WireFormat

README = Path(__file__).resolve().parents[1] / "README.md"


def client_for(stack, nc, **kw) -> OrchestratorClient:
    return OrchestratorClient(nc, tenant_id="dev", user_id="alice", settings=stack.settings, **kw)


async def next_answer(events, task_id: str, seen: list[EventRecord]) -> None:
    """Iterate until the task's last event (`task.status completed`), keeping each in `seen`."""
    async with asyncio.timeout(20):
        async for record in events:
            seen.append(record)
            event = record.event
            if isinstance(event, TaskStatusChanged) and event.task_id == task_id:
                if event.status is TaskStatus.COMPLETED:
                    return
    raise AssertionError("the iterator ended before the answer")


@pytest.mark.parametrize("wire", list(WireFormat), ids=["json", "msgpack"])
async def test_client_runs_a_conversation_with_every_action(stack, wire):
    client = client_for(stack, stack.nc, wire=wire)
    session = await client.start_session("demo", {"topic": "billing"})
    assert session.status is SessionStatus.OPEN and session.metadata == {"topic": "billing"}
    assert (await client.get_session(session.session_id)).session_id == session.session_id
    updated = await client.update_session(session.session_id, {"topic": "", "lang": "en"})
    assert updated.metadata == {"lang": "en"}

    accepted = await client.send(session.session_id, "hello", message_id="m-1")
    again = await client.send(session.session_id, "hello", message_id="m-1")
    assert again.task_id == accepted.task_id  # the same id is the same turn, not a second one

    async def done() -> bool:
        return (await client.get_task(accepted.task_id)).status is TaskStatus.COMPLETED

    await wait_until(done, message="the task to complete")
    assert (await client.get_task(accepted.task_id)).answer == "[Demo] You said: hello"
    page = await client.event_page(session.session_id)
    sent = [r.event for r in page.events if isinstance(r.event, MessageAccepted)]
    assert [e.task_id for e in sent] == [accepted.task_id]

    listed = await client.list_sessions(status=SessionStatus.OPEN)
    assert session.session_id in {s.session_id for s in listed.items}
    closed = await client.close_session(session.session_id, "done")
    assert closed.status is SessionStatus.CLOSED and closed.close_reason == "done"


async def test_client_raises_the_typed_errors_of_the_orchestrator(stack):
    client = client_for(stack, stack.nc)
    with pytest.raises(NotFound):
        await client.get_session("no-such-session")
    with pytest.raises(NotFound):
        await client.cancel_task("no-such-task")
    with pytest.raises(ValidationFailed):
        await client.start_session("not valid!")
    reader = client_for(stack, stack.nc, permissions=["sessions:read"])
    with pytest.raises(Forbidden):
        await reader.start_session("demo")


async def test_client_cancels_and_answers_a_task_waiting_for_input(stack):
    client = client_for(stack, stack.nc)
    session = await client.start_session("demo")
    waiting = await client.send(session.session_id, "/confirm delete the logs")

    async def asks() -> bool:
        return (await client.get_task(waiting.task_id)).status is TaskStatus.INPUT_REQUIRED

    await wait_until(asks, message="the agent's question")
    answered = await client.respond_task(waiting.task_id, "yes")
    assert answered.task_id == waiting.task_id

    async def completed() -> bool:
        return (await client.get_task(waiting.task_id)).status is TaskStatus.COMPLETED

    await wait_until(completed, message="the answered task to complete")
    second = await client.send(session.session_id, "/confirm reboot")
    await wait_until(lambda: asks_for(client, second.task_id), message="the second question")
    cancelled = await client.cancel_task(second.task_id)
    assert cancelled.status is TaskStatus.CANCELLED


async def asks_for(client: OrchestratorClient, task_id: str) -> bool:
    return (await client.get_task(task_id)).status is TaskStatus.INPUT_REQUIRED


async def test_event_iterator_replays_from_a_sequence_then_follows_live(stack):
    client = client_for(stack, stack.nc)
    session = await client.start_session("demo")
    first = await client.send(session.session_id, "one")
    seen: list[EventRecord] = []
    async with client.events(session.session_id) as events:
        await next_answer(events, first.task_id, seen)
        assert isinstance(seen[0].event, SessionStarted)
        middle = seen[-1].seq
        second = await client.send(session.session_id, "two")
        await next_answer(events, second.task_id, seen)
    stored = await client.event_page(session.session_id)
    assert [r.seq for r in seen] == [r.seq for r in stored.events]  # each once, in order
    # From a sequence: exactly the events stored after it.
    resumed: list[EventRecord] = []
    async with client.events(session.session_id, after_seq=middle) as events:
        await next_answer(events, second.task_id, resumed)
    assert [r.seq for r in resumed] == [r.seq for r in seen if r.seq > middle]
    assert events.recovered


async def test_event_iterator_resumes_by_itself_after_its_connection_is_cut(stack):
    proxy = await TcpProxy(stack.server.host, stack.server.port).start()
    # A poll far beyond the test's waits: only the reconnect can make it read the stream again.
    settings = stack.settings.model_copy(update={"client_events_poll": 600.0})
    nc = await connect_client(proxy.url)
    try:
        client = OrchestratorClient(nc, tenant_id="dev", user_id="alice", settings=settings)
        session = await client.start_session("demo")
        first = await client.send(session.session_id, "before")
        seen: list[EventRecord] = []
        async with client.events(session.session_id) as events:
            await next_answer(events, first.task_id, seen)
            proxy.cut()
            await wait_until(lambda: not nc.is_connected, message="the client to notice")
            # Another service sends while this client is away: its live events are lost to it.
            reply = await call(stack.nc, "chat.send", {"session_id": session.session_id,
                                                       "content": "while away"})  # fmt: skip
            missed = reply.data["task_id"]
            await wait_until(
                lambda: task_completed(stack.nc, missed), message="the missed task to complete"
            )
            proxy.restore()
            await next_answer(events, missed, seen)
        stored = await client.event_page(session.session_id)
        assert [r.seq for r in seen] == [r.seq for r in stored.events]
    finally:
        await nc.close()
        await proxy.stop()


async def task_completed(nc: nats.NATS, task_id: str) -> bool:
    reply = await call(nc, "task.get", {"task_id": task_id})
    return reply.data.get("status") == "completed"


def readme_python_example() -> str:
    """The README's Python client example (the ```python block under its heading)."""
    text = README.read_text()
    section = text.split("### Python client", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


async def test_readme_python_example_runs_as_written(stack):
    code = readme_python_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 13
    env = {**os.environ, "NATS_URL": stack.url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "[Demo] You said: hello", err.decode()
