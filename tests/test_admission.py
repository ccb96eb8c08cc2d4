"""A saturated instance sheds load: it leaves the queue groups, so NATS routes to the others.

The test plays the management service (a real NATS responder) and holds every agent lookup, so
each `session.start` of an unknown agent occupies an action slot until the test lets it go.
"""

from __future__ import annotations

import asyncio

from conftest import wait_until
from support.calls import call
from support.stack import start_stack, stop_stack

from orchestrator.codecs.agent_configs import AgentConfig
from orchestrator.codecs.wire import encode
from orchestrator.subjects import Subjects

FLOOD = 40
SLOTS = 4


def served(stack, endpoint: str = "session-start") -> int:
    """Requests this instance's micro endpoint has taken in (its STATS)."""
    stats = stack.orchestrator.server.service.stats()
    return next(ep.num_requests for ep in stats.endpoints if ep.name == endpoint)


async def test_a_saturated_instance_leaves_the_queue_group_and_rejoins(nats_server, nc):
    small = await start_stack(
        nats_server, agent=None, action_concurrency=SLOTS, agent_lookup_timeout=60
    )
    large = await start_stack(nats_server, agent=None, agent_lookup_timeout=60)
    held = []

    async def hold(msg) -> None:
        held.append(msg)

    lookups = await nc.subscribe(Subjects().management_agent_get, cb=hold)
    await nc.flush()
    calls: list[asyncio.Task] = []
    try:
        for i in range(FLOOD):
            calls.append(
                asyncio.create_task(
                    call(nc, "session.start", {"agent_id": "held"}, timeout=60, user=f"u{i}")
                )
            )
            # Every request reaches a handler (and so its lookup) before the next is sent: none
            # may wait unserved behind the full instance.
            await wait_until(lambda n=i + 1: len(held) == n, timeout=15,
                             message=f"request {i + 1} to reach a handler")  # fmt: skip
        assert small.orchestrator.server.saturated
        assert served(small) <= SLOTS
        assert served(large) >= FLOOD - SLOTS

        config = encode(AgentConfig(tenant_id="dev", name="Held"))
        for msg in held:
            await msg.respond(config)
        replies = await asyncio.wait_for(asyncio.gather(*calls), 30)
        assert all(reply.error is None for reply in replies), [r.data for r in replies]

        await wait_until(lambda: not small.orchestrator.server.saturated, timeout=10,
                         message="the small instance to rejoin")  # fmt: skip
        before = served(small)
        for i in range(100):  # the queue group picks at random: 100 misses in a row never happen
            reply = await call(nc, "session.start", {"agent_id": "demo"}, user=f"after{i}")
            assert reply.error is None, reply.data
            if served(small) > before:
                break
        assert served(small) > before
    finally:
        await lookups.unsubscribe()
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await stop_stack(large)
        await stop_stack(small)
