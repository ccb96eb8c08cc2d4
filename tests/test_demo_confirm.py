"""The demo agent pauses for a human: `/confirm <action>` ends `input_required`, the user's answer
(`task.respond`) finishes the turn. The orchestrator and `orchestrator agent` are real processes."""

from __future__ import annotations

import pytest
from conftest import wait_until
from support.calls import connect_client, seed_demo_agent, wait_for_service
from support.processes import OrchestratorProcess

from orchestrator.client import OrchestratorClient
from orchestrator.codecs.execution_messages import InputRequest
from orchestrator.codecs.records import TaskStatus


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
            process.stop()


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("yes", "[Demo] Approved: refund 20 EUR. Done."),
        ("no", "[Demo] Not approved ('no'): refund 20 EUR. Nothing was done."),
    ],
)
async def test_confirm_asks_for_approval_and_the_answer_finishes_the_turn(system, answer, said):
    client = OrchestratorClient(system, tenant_id="dev", user_id="alice")
    sid = (await client.start_session("demo")).session_id
    task_id = (await client.send(sid, "/confirm refund 20 EUR")).task_id

    async def status_is(status: TaskStatus) -> bool:
        return (await client.get_task(task_id)).status is status

    await wait_until(
        lambda: status_is(TaskStatus.INPUT_REQUIRED), timeout=30, message="the question"
    )
    assert (await client.get_task(task_id)).input == InputRequest(
        prompt="Approve: refund 20 EUR? (yes/no)",
        schema={"type": "string", "enum": ["yes", "no"]},
    )

    await client.respond_task(task_id, answer)
    await wait_until(
        lambda: status_is(TaskStatus.COMPLETED), timeout=30, message="the turn to complete"
    )
    assert (await client.get_task(task_id)).answer == said
