"""Every nats-py internal the service relies on, exercised on a real server.

`service/runtime/nats_internals.py` is the one place that reads or writes private attributes of
nats-py; if an upgrade renames or reshapes one of them, a test here fails.
"""

from __future__ import annotations

import asyncio

import nats
from conftest import wait_until
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig
from nats.micro import ServiceConfig
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from orchestrator.service.runtime.nats_internals import (
    endpoint_subscription,
    endpoints_by_name,
    flush_in_order,
    kv_stream,
    on_slow_consumer,
    record_endpoint_error,
    record_processing,
    reply_subject,
    resubscribe_endpoint,
)


async def _service(nc, handler) -> Service:
    service = Service(nc, ServiceConfig(name="probe", version="1.0.0"))
    await service.add_endpoint(EndpointConfig(name="echo", subject="probe.echo", handler=handler))
    await service.start()
    return service


async def test_a_micro_request_tells_its_reply_subject(nc):
    seen: list[str] = []
    got = asyncio.Event()

    async def handler(request: Request) -> None:
        seen.append(reply_subject(request))
        got.set()
        if seen[-1]:
            await request.respond(b"ok")

    service = await _service(nc, handler)
    try:
        await nc.request("probe.echo", b"", timeout=5)
        got.clear()
        await nc.publish("probe.echo", b"")
        await asyncio.wait_for(got.wait(), 5)
        assert seen[0].startswith("_INBOX.") and seen[1] == ""
    finally:
        await service.stop()


async def test_endpoint_statistics_can_be_completed_by_hand(nc):
    async def handler(request: Request) -> None:
        await request.respond(b"ok")

    service = await _service(nc, handler)
    try:
        await nc.request("probe.echo", b"", timeout=5)
        endpoint = endpoints_by_name(service)["echo"]
        before = service.stats().endpoints[0].processing_time
        record_processing(endpoint, 5_000_000_000)
        record_endpoint_error(endpoint, "conflict: late failure")
        stats = service.stats().endpoints[0]
        assert stats.num_requests == 1 and stats.num_errors == 1
        assert stats.last_error == "conflict: late failure"
        assert stats.processing_time == before + 5_000_000_000
        assert stats.average_processing_time == stats.processing_time
    finally:
        await service.stop()


async def test_an_endpoint_can_move_to_a_new_subscription_and_back_into_its_queue_group(nc):
    async def handler(request: Request) -> None:
        await request.respond(b"ok")

    service = await _service(nc, handler)
    try:
        endpoint = endpoints_by_name(service)["echo"]
        old = endpoint_subscription(endpoint)
        assert isinstance(old, Subscription)
        new = await resubscribe_endpoint(nc, endpoint, pending_msgs=8, pending_bytes=1 << 20)
        await old.drain()
        assert endpoint_subscription(endpoint) is new
        assert new.queue == "q"
        reply = await nc.request("probe.echo", b"", timeout=5)
        assert reply.data == b"ok"
        # Micro still counts what the new subscription takes in, and still stops it cleanly.
        assert service.stats().endpoints[0].num_requests == 1
    finally:
        await service.stop()
    try:
        await nc.request("probe.echo", b"", timeout=1)
        raise AssertionError("the endpoint still answers after stop")
    except nats.errors.NoRespondersError:
        pass


async def test_a_bucket_names_its_stream_and_subject_prefix(nc):
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="probe_bucket"))
    await kv.put("a.b", b"1")
    bucket_js, stream, prefix = kv_stream(kv)
    assert (stream, prefix) == ("KV_probe_bucket", "$KV.probe_bucket.")
    info = await bucket_js.stream_info(stream, subjects_filter=prefix + ">")
    assert info.state.subjects == {"$KV.probe_bucket.a.b": 1}


async def test_a_slow_consumer_drop_is_told_to_the_listener_of_its_subscription(nats_server):
    told: list[str] = []

    async def error_cb(exc: Exception) -> None:
        told.append(f"connection: {exc}")

    nc = await nats.connect(nats_server.url, error_cb=error_cb)
    release = asyncio.Event()
    try:

        async def stuck(_msg) -> None:
            await release.wait()

        mine = await nc.subscribe("probe.mine", cb=stuck, pending_msgs_limit=2)
        other = await nc.subscribe("probe.other", cb=stuck, pending_msgs_limit=2)

        def listener(sub: Subscription) -> bool:
            if sub is not mine:
                return False
            told.append("listener")
            return True

        on_slow_consumer(nc, listener)
        for _ in range(10):  # the callback holds the first, two wait, the rest are dropped
            await nc.publish("probe.mine", b"x")
            await nc.publish("probe.other", b"x")
        await wait_until(
            lambda: "listener" in told and any(t.startswith("connection") for t in told),
            message=lambda: f"drops of both subscriptions told, got {told}",
        )
        # Only the other subscription's drops reach the connection's own callback.
        assert all(str(other.subject) in t for t in told if t.startswith("connection")), told
    finally:
        release.set()
        await nc.close()


async def test_a_flush_in_order_returns_after_the_server_routed_what_was_sent_before(nats_server):
    """Publishes flushed on one connection are never overtaken by a later one on another."""
    a, b, c = [await nats.connect(nats_server.url) for _ in range(3)]
    try:
        for round_ in range(200):
            got: list[bytes] = []
            done = asyncio.Event()

            async def received(msg, got=got, done=done) -> None:
                got.append(msg.data[:5])
                if len(got) == 4:
                    done.set()

            sub = await c.subscribe(f"probe.order.{round_}", cb=received)
            await flush_in_order(c)
            for payload in (b"early", b"X" * 100_000, b"later"):
                await a.publish(f"probe.order.{round_}", payload)
            await flush_in_order(a)
            await b.publish(f"probe.order.{round_}", b"after")
            await b.flush()
            await asyncio.wait_for(done.wait(), 10)
            assert got == [b"early", b"XXXXX", b"later", b"after"], (round_, got)
            await sub.unsubscribe()
    finally:
        for client in (a, b, c):
            await client.close()
