"""Signed webhooks: delivered at least once from the durable queue to a real receiver process
that verifies every signature, goes down and comes back."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import wait_until
from support.calls import client_of, put_agent
from support.child_process import ChildProcess
from support.stack import DEFAULT_AGENT, start_stack, stop_stack

from orchestrator.codecs.agent_configs import Access, AgentConfig
from orchestrator.codecs.records import TaskStatus
from orchestrator.codecs.webhooks import WebhookJob, WebhookPayload, WebhookTaskData
from orchestrator.codecs.wire import encode
from orchestrator.service.runtime.nats_server import free_port
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.service.store.ids import utcnow
from orchestrator.service.webhooks.signature import secret_key, signed_headers

SECRET = "whsec_" + base64.b64encode(b"a-test-signing-key-of-32-bytes!!").decode()
RECEIVER = Path(__file__).with_name("webhook_receiver.py")


class Receiver(ChildProcess):
    """`tests/webhook_receiver.py` as a child process on a fixed port, restartable."""

    def __init__(self, tmp: Path, name: str = "receiver") -> None:
        self.port = free_port()
        self.out = tmp / f"{name}.jsonl"
        self.out.touch()
        argv = [sys.executable, str(RECEIVER), str(self.port), SECRET, str(self.out)]
        super().__init__(argv, tmp / f"{name}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Receiver:
        """Spawn it and wait until it listens."""
        self.spawn()
        await self.printed("Running on")
        return self

    def received(self) -> list[dict]:
        return [json.loads(line) for line in self.out.read_text().splitlines()]

    def bodies(self) -> list[dict]:
        return [entry["body"] for entry in self.received() if "id" in entry]

    def got(self, task_id: str, kind: str) -> bool:
        return any(b["data"]["task_id"] == task_id and b["type"] == kind for b in self.bodies())


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    receiver = Receiver(tmp_path)
    yield receiver
    receiver.stop()


async def webhook_stack(
    nats_server, receiver: Receiver, agent: AgentSettings = DEFAULT_AGENT, **overrides
):
    stack = await start_stack(
        nats_server,
        agent=agent,
        webhook_allowed_origins=[receiver.origin],
        webhook_tenant_secrets={"dev": SECRET},
        webhook_backoff_initial=0.05,
        webhook_backoff_max=0.5,
        webhook_max_attempts=1000,
        **overrides,
    )
    config = AgentConfig(
        tenant_id="dev", name="Demo", access=Access.TENANT, webhook_url=receiver.url
    )
    await put_agent(stack.nc, "demo", config)
    agents = stack.orchestrator.agents

    def mirrored() -> bool:
        cached = agents.cached("demo")
        return cached is not None and cached.webhook_url == receiver.url

    await wait_until(mirrored, message="the agent's webhook_url in the mirror")
    return stack


async def test_every_terminal_state_and_input_required_posts_a_verified_webhook(
    nats_server, receiver
):
    await receiver.start()
    stack = await webhook_stack(nats_server, receiver)
    try:
        client = client_of(stack)
        sid = (await client.start_session("demo")).session_id
        done = await client.send(sid, "hello")
        await wait_until(lambda: receiver.got(done.task_id, "task.completed"), message="completed")
        asking = await client.send(sid, "/confirm restart")
        await wait_until(
            lambda: receiver.got(asking.task_id, "task.input_required"), message="input_required"
        )
        await client.cancel_task(asking.task_id)
        await wait_until(lambda: receiver.got(asking.task_id, "task.cancelled"), message="cancel")
        bodies = {(b["type"], b["data"]["task_id"]): b for b in receiver.bodies()}
        completed = bodies[("task.completed", done.task_id)]["data"]
        assert completed["answer"] == "[Demo] You said: hello"
        assert (completed["tenant_id"], completed["user_id"], completed["agent_id"]) == (
            "dev", "alice", "demo",
        )  # fmt: skip
        assert completed["session_id"] == sid and completed["status"] == "completed"
        question = bodies[("task.input_required", asking.task_id)]["data"]
        assert question["input"]["prompt"]
        assert not any("rejected" in entry for entry in receiver.received())
        # No webhook for states that are neither terminal nor a question.
        assert {b["data"]["status"] for b in receiver.bodies()} <= {
            "completed", "input_required", "cancelled",
        }  # fmt: skip
    finally:
        await stop_stack(stack)


async def test_a_failed_task_posts_its_error(nats_server, receiver):
    await receiver.start()
    failing = AgentSettings(chunk_delay=0.0, fail_always=True)
    stack = await webhook_stack(nats_server, receiver, agent=failing, execution_max_retries=0)
    try:
        client = client_of(stack)
        sid = (await client.start_session("demo")).session_id
        doomed = await client.send(sid, "this fails")
        await wait_until(lambda: receiver.got(doomed.task_id, "task.failed"), message="failed")
        body = next(b for b in receiver.bodies() if b["data"]["task_id"] == doomed.task_id)
        task = await client.get_task(doomed.task_id)
        assert body["data"]["error"]["code"] == task.error.code
        assert body["data"]["status"] == "failed" and "answer" not in body["data"]
    finally:
        await stop_stack(stack)


async def test_webhooks_wait_in_the_queue_while_the_receiver_is_down(nats_server, receiver):
    await receiver.start()
    stack = await webhook_stack(nats_server, receiver)
    try:
        client = client_of(stack)
        sid = (await client.start_session("demo")).session_id
        first = await client.send(sid, "before")
        await wait_until(lambda: receiver.got(first.task_id, "task.completed"), message="first")
        receiver.stop()
        # The chat goes on while no webhook can be sent.
        during = [await client.send(sid, f"while down {n}") for n in range(3)]

        async def answered() -> bool:
            tasks = [await client.get_task(t.task_id) for t in during]
            return all(t.status is TaskStatus.COMPLETED for t in tasks)

        await wait_until(answered, message="the chats to be answered")
        js = stack.nc.jetstream()

        async def retried() -> bool:
            info = await js.consumer_info(stack.settings.webhooks_stream, "webhooks")
            return info.num_redelivered >= 1

        await wait_until(retried, message="a failed delivery to be tried again")
        await receiver.start()
        for task in during:
            await wait_until(
                lambda t=task: receiver.got(t.task_id, "task.completed"), message="redelivery"
            )
        ids = [entry["id"] for entry in receiver.received()]
        assert len(set(ids)) == 4  # one webhook id per event, the same on every retry
    finally:
        await stop_stack(stack)


async def test_a_webhook_never_goes_to_an_origin_that_is_not_allowed(
    nats_server, receiver, tmp_path
):
    elsewhere = Receiver(tmp_path, "elsewhere")
    await receiver.start()
    await elsewhere.start()
    stack = await webhook_stack(nats_server, receiver)
    try:
        js = stack.nc.jetstream()
        for target, task_id in ((elsewhere.url, "t-elsewhere"), (receiver.url, "t-allowed")):
            data = WebhookTaskData(
                task_id=task_id, session_id="s1", tenant_id="dev", user_id="alice",
                agent_id="demo", status=TaskStatus.COMPLETED,
            )  # fmt: skip
            payload = WebhookPayload(type="task.completed", timestamp=utcnow(), data=data)
            job = WebhookJob(webhook_id=f"msg_{task_id}", url=target, payload=payload)
            await js.publish(stack.subjects.webhook("dev"), encode(job))
        await wait_until(lambda: receiver.got("t-allowed", "task.completed"), message="allowed")

        async def queue_empty() -> bool:
            info = await js.consumer_info(stack.settings.webhooks_stream, "webhooks")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_until(queue_empty, message="both jobs to be handled")
        assert elsewhere.received() == []
    finally:
        elsewhere.stop()
        await stop_stack(stack)


async def test_receiver_refuses_a_wrong_signature(receiver):
    await receiver.start()
    body = b'{"type":"task.completed"}'
    good = signed_headers(secret_key(SECRET), "msg_1", int(__import__("time").time()), body)
    bad = {
        **good,
        "webhook-signature": signed_headers(b"other", "msg_1", 1, body)["webhook-signature"],
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(receiver.url, data=body, headers=bad) as resp:
            assert resp.status == 401
        async with http.post(receiver.url, data=body, headers=good) as resp:
            assert resp.status == 204
    assert [entry.get("id") for entry in receiver.received()] == [None, "msg_1"]


def test_allowed_origins_must_be_bare_http_origins():
    with pytest.raises(ValueError, match="WEBHOOK_ALLOWED_ORIGINS"):
        OrchestratorSettings(webhook_allowed_origins=["http://127.0.0.1:9000/hooks"])
    with pytest.raises(ValueError, match="WEBHOOK_ALLOWED_ORIGINS"):
        OrchestratorSettings(webhook_allowed_origins=["file:///etc/passwd"])
    ok = OrchestratorSettings(webhook_allowed_origins=["https://hooks.example.com"])
    assert ok.webhook_allowed_origins == ["https://hooks.example.com"]
