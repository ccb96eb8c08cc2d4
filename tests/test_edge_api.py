"""The HTTP API against the real orchestrator and reference agent."""

from __future__ import annotations

from typing import Any

from conftest import wait_until

from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.edge_server import Edge


def auth(edge: Edge, tenant: str = "dev", user: str = "alice", **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(edge.settings, tenant, user, **kw)}"}


async def request(http, method, url, headers, body=None) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, json=body) as resp:
        return resp.status, await resp.json()


async def test_session_lifecycle_over_http(edge, http):
    base, alice = f"{edge.url}/api", auth(edge)
    status, started = await request(http, "POST", f"{base}/chat/start", alice,
                                    {"agent_id": "demo", "metadata": {"k": "v"}})  # fmt: skip
    assert status == 201
    sid = started["session_id"]
    assert started["session"]["metadata"] == {"k": "v"}
    assert started["ws_url"] == f"ws://127.0.0.1:{edge.port}/ws/chat/{sid}"

    status, page = await request(http, "GET", f"{base}/chat/sessions?limit=10", alice)
    assert status == 200 and [s["session_id"] for s in page["items"]] == [sid]
    status, one = await request(http, "GET", f"{base}/chat/sessions/{sid}", alice)
    assert status == 200 and one["status"] == "open"

    status, accepted = await request(http, "POST", f"{base}/chat/sessions/{sid}/messages", alice,
                                     {"content": "over http"})  # fmt: skip
    assert status == 202 and accepted["status"] == "queued" and accepted["seq"] > 0
    task_url = f"{base}/tasks/{accepted['task_id']}"

    async def completed() -> bool:
        nonlocal task
        _, task = await request(http, "GET", task_url, alice)
        return task["status"] == "completed"

    task: dict[str, Any] = {}
    await wait_until(completed, message="the task completes")
    assert task["answer"] == "[Demo] You said: over http"
    status, error = await request(http, "POST", f"{task_url}/cancel", alice)
    assert (status, error["error"]["code"]) == (409, "conflict")

    status, events = await request(http, "GET", f"{base}/chat/sessions/{sid}/events?after_seq=0",
                                   alice)  # fmt: skip
    types = [e["event"]["type"] for e in events["events"]]
    assert status == 200 and types[0] == "session.started" and "chat.response" in types
    status, closed = await request(http, "DELETE", f"{base}/chat/sessions/{sid}", alice)
    assert status == 200 and closed["status"] == "closed"


async def test_another_tenant_or_user_cannot_see_a_session(edge, http):
    base = f"{edge.url}/api"
    _, started = await request(http, "POST", f"{base}/chat/start", auth(edge), {"agent_id": "demo"})
    sid = started["session_id"]
    for intruder in (auth(edge, tenant="other"), auth(edge, user="mallory")):
        for method, path in (("GET", f"/chat/sessions/{sid}"), ("DELETE", f"/chat/sessions/{sid}"),
                             ("GET", f"/chat/sessions/{sid}/events")):  # fmt: skip
            status, body = await request(http, method, base + path, intruder)
            assert (status, body["error"]["code"]) == (404, "not_found"), (method, path)


async def test_missing_permissions_are_403(edge, http):
    reader = auth(edge, permissions=["sessions:read"])
    status, body = await request(http, "POST", f"{edge.url}/api/chat/start", reader,
                                 {"agent_id": "demo"})  # fmt: skip
    assert (status, body["error"]["code"]) == (403, "forbidden")


async def test_an_unknown_agent_is_404(edge, http):
    status, body = await request(http, "POST", f"{edge.url}/api/chat/start", auth(edge),
                                 {"agent_id": "nobody"})  # fmt: skip
    assert (status, body["error"]["code"]) == (404, "not_found")


async def test_ready_when_the_orchestrator_buckets_exist(edge, http):
    async with http.get(f"{edge.url}/health/ready") as resp:
        assert resp.status == 200
