"""`agent.list` and `GET /api/agents`: exactly the agents a caller may start a session with."""

from __future__ import annotations

import aiohttp
from conftest import wait_until
from support.calls import call, put_agent

from orchestrator.codecs.agent_configs import Access, AgentConfig, BusyPolicy
from orchestrator.service.edge.auth import mint_token

AGENTS = {
    "demo": AgentConfig(tenant_id="dev", name="Demo"),
    "helper": AgentConfig(tenant_id="dev", name="Helper", on_busy=BusyPolicy.REJECT),
    "alice-only": AgentConfig(tenant_id="dev", access=Access.USERS, users=["alice"]),
    "off": AgentConfig(tenant_id="dev", name="Off", enabled=False),
    "foreign": AgentConfig(tenant_id="acme", name="Foreign"),
    "world": AgentConfig(tenant_id="acme", name="World", access=Access.PUBLIC),
}


async def stored(stack) -> None:
    for agent_id, config in AGENTS.items():
        await put_agent(stack.nc, agent_id, config)

    async def mirrored() -> bool:
        seen = stack.orchestrator.agents.mirrored()
        return all(seen.get(agent_id) == config for agent_id, config in AGENTS.items())

    await wait_until(mirrored, message="every agent config in the instance's mirror")


async def test_agent_list_names_the_tenants_usable_agents_and_public_ones(stack):
    await stored(stack)
    alice = await call(stack.nc, "agent.list", {})
    assert alice.error is None
    assert [a["agent_id"] for a in alice.data["items"]] == ["alice-only", "demo", "helper", "world"]
    helper = next(a for a in alice.data["items"] if a["agent_id"] == "helper")
    assert helper == {"agent_id": "helper", "name": "Helper", "access": "tenant",
                      "on_busy": "reject"}  # fmt: skip
    unnamed = next(a for a in alice.data["items"] if a["agent_id"] == "alice-only")
    assert unnamed["name"] == "alice-only"  # no name: the id is shown
    assert alice.data["next_cursor"] is None

    bob = await call(stack.nc, "agent.list", {}, user="bob")
    assert [a["agent_id"] for a in bob.data["items"]] == ["demo", "helper", "world"]
    acme = await call(stack.nc, "agent.list", {}, tenant="acme", user="carol")
    assert [a["agent_id"] for a in acme.data["items"]] == ["foreign", "world"]


async def test_agent_list_pages_by_cursor(stack):
    await stored(stack)
    first = await call(stack.nc, "agent.list", {"limit": 2})
    assert [a["agent_id"] for a in first.data["items"]] == ["alice-only", "demo"]
    assert first.data["next_cursor"] == "demo"
    rest = await call(stack.nc, "agent.list", {"limit": 2, "cursor": "demo"})
    assert [a["agent_id"] for a in rest.data["items"]] == ["helper", "world"]
    assert rest.data["next_cursor"] is None
    refused = await call(stack.nc, "agent.list", {"limit": 0})
    assert refused.code == "validation_error"


async def test_get_api_agents_lists_them_for_the_token_and_needs_one(stack, edge):
    await stored(stack)
    async with aiohttp.ClientSession() as http:
        token = mint_token(edge.settings, "dev", "bob")
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{edge.url}/api/agents?limit=2", headers=headers) as resp:
            assert resp.status == 200
            page = await resp.json()
        assert [a["agent_id"] for a in page["items"]] == ["demo", "helper"]
        assert page["next_cursor"] == "helper"
        async with http.get(f"{edge.url}/api/agents") as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (401, "unauthorized")
        sender = mint_token(edge.settings, "dev", "bob", permissions=["chat:send"])
        no_read = {"Authorization": f"Bearer {sender}"}
        async with http.get(f"{edge.url}/api/agents", headers=no_read) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (403, "forbidden")
