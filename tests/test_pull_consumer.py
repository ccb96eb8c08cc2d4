"""The pull loop shared by the task worker and webhook delivery, on a real nats-server."""

from __future__ import annotations

import asyncio

import msgspec
from conftest import wait_until
from loguru import logger
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import StreamConfig

from orchestrator.codecs.wire import encode
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.service.store.pull_consumer import PullConsumer, PullSpec


class Item(msgspec.Struct):
    n: int


def spec(ack_wait: float = 120.0) -> PullSpec:
    return PullSpec(
        "test-pull", "PULLTEST", "pull-test", "pulltest.>",
        ack_wait=ack_wait, concurrency=2, batch=2, kind=Item,
    )  # fmt: skip


async def test_a_message_whose_handling_failed_on_a_nats_error_comes_back_soon(nc):
    # The ack wait (a task's lease) is far longer than the test's waits: only the short retry
    # delay after a NATS error brings the message back in time.
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PULLTEST", subjects=["pulltest.>"]))
    deliveries: list[int] = []

    async def handle(msg, item: Item) -> None:
        deliveries.append(msg.metadata.num_delivered)
        if len(deliveries) == 1:
            raise NatsTimeout  # as a store write does while its stream elects a leader
        await msg.ack()

    settings = OrchestratorSettings(work_retry_delay=0.2)
    supervisor = Supervisor(settings)
    consumer = PullConsumer(js, spec(), settings, handle)
    await consumer.start(supervisor)
    try:
        await js.publish("pulltest.a", encode(Item(n=1)))
        await wait_until(
            lambda: deliveries == [1, 2], timeout=30,
            message=lambda: f"a second delivery well before the ack wait, got {deliveries}",
        )  # fmt: skip
    finally:
        await consumer.stop(grace=1.0)
        await supervisor.stop()


async def test_a_consumer_nobody_answers_for_is_bound_again_in_the_loop_without_a_restart(nc):
    # Its stream deleted: pulls go unanswered and binding fails until the stream is back (as
    # while a cluster elects the consumer's leader). The loop keeps trying by itself: the
    # supervisor never sees it fail, and the next message is handled.
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PULLTEST", subjects=["pulltest.>"]))
    handled: list[int] = []
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message}")

    async def handle(msg, item: Item) -> None:
        handled.append(item.n)
        await msg.ack()

    settings = OrchestratorSettings(
        pull_bind_attempts=1000, pull_bind_timeout=1.0, pull_bind_backoff_max=0.2,
        loop_restart_backoff_initial=0.05, task_fetch_wait=0.2,
    )  # fmt: skip
    supervisor = Supervisor(settings)
    consumer = PullConsumer(js, spec(), settings, handle)
    await consumer.start(supervisor)
    try:
        await js.publish("pulltest.a", encode(Item(n=1)))
        await wait_until(lambda: handled == [1], timeout=30, message="the first message")
        await js.delete_stream("PULLTEST")
        await wait_until(
            lambda: sum("binding to consumer" in line for line in lines) >= 2, timeout=30,
            message=lambda: f"binds tried in the loop, log: {lines[-3:]}",
        )  # fmt: skip
        await js.add_stream(StreamConfig(name="PULLTEST", subjects=["pulltest.>"]))
        await js.publish("pulltest.a", encode(Item(n=2)))
        await wait_until(lambda: handled == [1, 2], timeout=30, message="the next message")
        assert not any("background loop test-pull failed" in line for line in lines), lines
        assert supervisor.failing() == {}
    finally:
        logger.remove(handler)
        await consumer.stop(grace=1.0)
        await supervisor.stop()


async def test_start_binds_once_the_consumer_can_be_made(nc):
    # Start-up before the stream can hold the consumer (as while a fresh cluster forms its Raft
    # group): start keeps trying, and binds once it can, instead of failing the process.
    js = nc.jetstream()
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message}")
    handled: list[int] = []

    async def handle(msg, item: Item) -> None:
        handled.append(item.n)
        await msg.ack()

    settings = OrchestratorSettings(pull_bind_attempts=1000, pull_bind_backoff_max=0.2)
    supervisor = Supervisor(settings)
    consumer = PullConsumer(js, spec(), settings, handle)
    starting = asyncio.create_task(consumer.start(supervisor))
    try:
        await wait_until(
            lambda: sum("binding to consumer" in line for line in lines) >= 2, timeout=30,
            message=lambda: f"binds tried at start, log: {lines[-3:]}",
        )  # fmt: skip
        assert not starting.done()
        await js.add_stream(StreamConfig(name="PULLTEST", subjects=["pulltest.>"]))
        await asyncio.wait_for(starting, timeout=30)
        await js.publish("pulltest.a", encode(Item(n=1)))
        await wait_until(lambda: handled == [1], timeout=30, message="the first message")
    finally:
        logger.remove(handler)
        starting.cancel()
        await consumer.stop(grace=1.0)
        await supervisor.stop()
