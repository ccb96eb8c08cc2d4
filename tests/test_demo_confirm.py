"""The demo agent pauses for a human: `/confirm <action>` ends `input_required`, the user's answer
(`task.respond`) finishes the turn. The orchestrator and `orchestrator agent` are real processes."""

from __future__ import annotations

import pytest
from conftest import wait_until
from harness import (
    OrchestratorProcess,
    call,
    connect_client,
    open_sessions,
    seed_demo_agent,
    wait_for_service,
)


@pytest.fixture
async def system(nats_server, tmp_path):
    service = OrchestratorProcess(nats_server.url, tmp_path / "service.log").start()
    agent = OrchestratorProcess(nats_server.url, tmp_path / "agent.log").start("agent")
    client = await connect_client(nats_server.url)
    try:
        await wait_for_service(client)
        await seed_demo_agent(client)
        yield client
    finally:
        await client.close()
        for process in (agent, service):
            process.terminate()
            process.close()


async def task_view(client, task_id: str) -> dict:
    return (await call(client, "task.get", {"task_id": task_id}, timeout=3)).data


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("yes", "[Demo] Approved: refund 20 EUR. Done."),
        ("no", "[Demo] Not approved ('no'): refund 20 EUR. Nothing was done."),
    ],
)
async def test_confirm_asks_for_approval_and_the_answer_finishes_the_turn(system, answer, said):
    client = system
    sid = (await open_sessions(client, ["alice"]))["alice"]
    sent = await call(client, "chat.send", {"session_id": sid, "content": "/confirm refund 20 EUR"})
    assert sent.error is None, sent.data
    task_id = sent.data["task_id"]

    async def status_is(status: str) -> bool:
        return (await task_view(client, task_id)).get("status") == status

    await wait_until(lambda: status_is("input_required"), timeout=30, message="the question")
    view = await task_view(client, task_id)
    assert view["input"] == {
        "prompt": "Approve: refund 20 EUR? (yes/no)",
        "schema": {"type": "string", "enum": ["yes", "no"]},
    }

    answered = await call(client, "task.respond", {"task_id": task_id, "content": answer})
    assert answered.error is None, answered.data
    await wait_until(lambda: status_is("completed"), timeout=30, message="the turn to complete")
    assert (await task_view(client, task_id))["answer"] == said
