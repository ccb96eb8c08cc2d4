"""Agent configs: access rules, invalid values, and the management-subject fallback with a TTL."""

from __future__ import annotations

import json

from conftest import wait_until
from support.calls import call, put_agent
from support.stack import start_stack, stop_stack

from orchestrator.codecs.agent_configs import Access, AgentConfig


async def test_listed_users_only_agent_admits_exactly_those_users(stack):
    vip = AgentConfig(tenant_id="dev", access=Access.USERS, users=["bob"])
    await put_agent(stack.nc, "vip", vip)
    bob = await call(stack.nc, "session.start", {"agent_id": "vip"}, user="bob")
    alice = await call(stack.nc, "session.start", {"agent_id": "vip"}, user="alice")
    assert bob.error is None and alice.code == "forbidden"


async def test_disabled_or_invalid_config_makes_the_agent_unusable(stack):
    await put_agent(stack.nc, "off", AgentConfig(tenant_id="dev", enabled=False))
    assert (await call(stack.nc, "session.start", {"agent_id": "off"})).code == "forbidden"
    kv = await stack.nc.jetstream().key_value("agent_configs")
    await kv.put("broken", b'{"tenant_id": 42}')
    assert (await call(stack.nc, "session.start", {"agent_id": "broken"})).code == "not_found"


async def test_unknown_agent_falls_back_to_the_management_subject_and_caches_it(stack):
    asked: list[str] = []

    async def management(msg):
        agent_id = json.loads(msg.data)["agent_id"]
        asked.append(agent_id)
        await msg.respond(json.dumps({"tenant_id": "dev", "name": "from management"}).encode())

    sub = await stack.nc.subscribe("nooble4.management.agent.get", cb=management)
    try:
        for _ in range(3):
            reply = await call(stack.nc, "session.start", {"agent_id": "remote"})
            assert reply.error is None, reply.data
        assert asked == ["remote"]
    finally:
        await sub.unsubscribe()


async def test_a_config_change_reaches_every_running_instance(stack):
    second = await start_stack(stack.server, agent=None)
    instances = [stack.orchestrator, second.orchestrator]

    def every_instance_has(access: Access) -> bool:
        configs = [instance.agents.cached("demo") for instance in instances]
        return all(config is not None and config.access is access for config in configs)

    try:
        await wait_until(lambda: every_instance_has(Access.TENANT), message="initial config")
        await put_agent(stack.nc, "demo", AgentConfig(tenant_id="dev", access=Access.PUBLIC))
        await wait_until(lambda: every_instance_has(Access.PUBLIC), message="update everywhere")
    finally:
        await stop_stack(second)


async def test_lookups_of_unknown_agents_are_cached_within_a_bounded_size(nats_server):
    stack = await start_stack(nats_server, agent=None, agent_cache_max_entries=5)
    asked: list[str] = []

    async def management(msg):  # knows no agent: every answer is a miss
        asked.append(json.loads(msg.data)["agent_id"])
        await stack.nc.publish(msg.reply, b"", headers={"Nats-Service-Error-Code": "404"})

    sub = await stack.nc.subscribe("nooble4.management.agent.get", cb=management)
    try:
        for i in range(20):
            reply = await call(stack.nc, "session.start", {"agent_id": f"made-up-{i}"})
            assert reply.code == "not_found", reply.data
        assert stack.orchestrator.agents.fallback_size == 5
        # The newest misses are still answered from the cache, the oldest were evicted.
        for agent_id in ("made-up-19", "made-up-0"):
            assert (await call(stack.nc, "session.start", {"agent_id": agent_id})).code == (
                "not_found"
            )
        assert asked.count("made-up-19") == 1 and asked.count("made-up-0") == 2
    finally:
        await sub.unsubscribe()
        await stop_stack(stack)
