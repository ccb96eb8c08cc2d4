"""The HTTP edge against a tiny responder on a real nats-server: errors, bus, CORS, health."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from orchestrator.codecs.actions import CancelTask, GetSession, GetTask, TaskView
from orchestrator.codecs.errors import (
    TRANSPORT,
    ActionTimeout,
    ErrorCode,
    NotFound,
    Unavailable,
    transport_for,
)
from orchestrator.codecs.records import TaskStatus
from orchestrator.codecs.wire import encode
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.bus import BusClient
from orchestrator.service.edge.edge_server import Edge
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.service.store.streams import ensure_resources, events_stream_config
from orchestrator.subjects import Subjects

SUBJECTS = Subjects()
ORIGIN = "http://localhost:8080"


def task_view(task_id: str) -> TaskView:
    now = datetime.now(UTC)
    return TaskView(task_id=task_id, session_id="s1", agent_id="demo", status=TaskStatus.QUEUED,
                    created_at=now, updated_at=now)  # fmt: skip


class Responder:
    """Plays the orchestrator for `task.get`: the task id names the error code to answer with."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.envelopes: list[dict[str, Any]] = []

    async def start(self) -> None:
        await self.nc.subscribe(SUBJECTS.action("task.get"), cb=self.on_task_get)
        await self.nc.subscribe(SUBJECTS.action("task.cancel"), cb=self.on_silence)
        await self.nc.flush()

    async def on_task_get(self, msg: Msg) -> None:
        envelope = json.loads(msg.data)
        self.envelopes.append(envelope)
        task_id = envelope["data"]["task_id"]
        if task_id == "garbled":
            headers = {"Nats-Service-Error": "bad", "Nats-Service-Error-Code": "404"}
            await self.nc.publish(msg.reply, b"not json", headers=headers)
        elif task_id in {c.value for c in ErrorCode}:
            status = str(transport_for(task_id).http_status)
            body = {"error": {"code": task_id, "message": f"failed with {task_id}"}}
            headers = {"Nats-Service-Error": body["error"]["message"],
                       "Nats-Service-Error-Code": status}  # fmt: skip
            await self.nc.publish(msg.reply, json.dumps(body).encode(), headers=headers)
        else:
            await self.nc.publish(msg.reply, encode(task_view(task_id)))

    async def on_silence(self, msg: Msg) -> None:
        """Never replies: the edge must time out."""


def settings(**overrides: Any) -> OrchestratorSettings:
    # Generous: an answer the responder gives at once must not time out on a loaded machine.
    return OrchestratorSettings(edge_port=0, **{"edge_action_timeout": 10.0, **overrides})


@pytest.fixture
async def responder(nc: Client) -> Responder:
    r = Responder(nc)
    await r.start()
    return r


@pytest.fixture
async def edge_factory(nc: Client) -> AsyncIterator:
    started: list[Edge] = []

    async def make(dev_token_route: bool = False, **overrides: Any) -> Edge:
        edge = Edge(settings(**overrides), nc, SUBJECTS, dev_token_route=dev_token_route)
        await edge.start()
        started.append(edge)
        return edge

    yield make
    for edge in started:
        await edge.stop()


@pytest.fixture
async def edge(edge_factory, responder) -> Edge:
    return await edge_factory()


def bearer(edge: Edge, user: str = "alice", **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(edge.settings, 'acme', user, **kwargs)}"}


async def get(http, edge, path, headers=None) -> tuple[int, dict[str, Any]]:
    async with http.get(edge.url + path, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("code", [c.value for c in ErrorCode])
async def test_each_error_code_maps_to_its_http_status_with_the_envelope(edge, http, code):
    status, body = await get(http, edge, f"/api/tasks/{code}", bearer(edge))
    assert status == TRANSPORT[ErrorCode(code)].http_status
    assert body == {"error": {"code": code, "message": f"failed with {code}"}}


async def test_a_successful_action_returns_the_reply_and_the_envelope_comes_from_the_token(
    edge, http, responder
):
    status, body = await get(http, edge, "/api/tasks/t1", bearer(edge, permissions=["tasks:read"]))
    assert status == 200 and body["task_id"] == "t1" and body["status"] == "queued"
    envelope = responder.envelopes[-1]
    assert (envelope["tenant_id"], envelope["user_id"]) == ("acme", "alice")
    assert envelope["permissions"] == ["tasks:read"]
    assert envelope["action_type"] == "task.get"


async def test_a_garbled_error_reply_is_rebuilt_from_its_headers(edge, http):
    status, body = await get(http, edge, "/api/tasks/garbled", bearer(edge))
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_no_responders_is_503_and_no_reply_is_504(edge_factory, responder, http):
    edge = await edge_factory(edge_action_timeout=1.0)  # only the silent subject waits for it
    status, body = await get(http, edge, "/api/chat/sessions/s1", bearer(edge))
    assert (status, body["error"]["code"]) == (503, "unavailable")
    async with http.post(f"{edge.url}/api/tasks/t1/cancel", headers=bearer(edge)) as resp:
        assert resp.status == 504 and (await resp.json())["error"]["code"] == "timeout"


async def test_bus_client_raises_typed_errors(nc, responder):
    bus = BusClient.for_edge(nc, SUBJECTS, settings())
    ctx = ExecutionContext(tenant_id="acme", user_id="alice")
    assert (await bus.call("task.get", ctx, GetTask(task_id="t9"))).task_id == "t9"
    with pytest.raises(NotFound):
        await bus.call("task.get", ctx, GetTask(task_id="not_found"))
    impatient = BusClient.for_edge(nc, SUBJECTS, settings(edge_action_timeout=1.0))
    with pytest.raises(ActionTimeout):  # the responder never answers a cancel
        await impatient.call("task.cancel", ctx, CancelTask(task_id="x"))
    with pytest.raises(Unavailable):
        await bus.call("session.get", ctx, GetSession(session_id="s1"))
    with pytest.raises(TypeError):
        await bus.call("session.get", ctx, GetTask(task_id="t1"))


async def test_missing_or_bad_tokens_are_401(edge, http):
    for headers in (None, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        status, body = await get(http, edge, "/api/tasks/t1", headers)
        assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_malformed_unknown_field_and_oversized_bodies(edge_factory, responder, http):
    edge = await edge_factory(max_message_bytes=2048)
    url = f"{edge.url}/api/chat/start"
    for body in (b"{", b'{"agent_id": "bad id!"}', b'{"agent_id": "demo", "tenant_id": "x"}'):
        async with http.post(url, data=body, headers=bearer(edge)) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "validation_error"
    big = json.dumps({"agent_id": "demo", "metadata": {"k": "x" * 4096}}).encode()
    async with http.post(url, data=big, headers=bearer(edge)) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"


async def test_bad_query_parameters_are_400(edge, http):
    for path in (
        "/api/chat/sessions?limit=0",
        "/api/chat/sessions?limit=x",
        "/api/chat/sessions/s1/events?after_seq=-1",
        "/api/chat/sessions?bogus=1",
    ):
        status, body = await get(http, edge, path, bearer(edge))
        assert (status, body["error"]["code"]) == (400, "validation_error"), path


async def test_unknown_routes_are_404_envelopes(edge, http):
    status, body = await get(http, edge, "/api/nothing-here")
    assert (status, body["error"]["code"]) == (404, "not_found")


async def test_user_rate_limit_is_429_with_retry_after(edge_factory, responder, http):
    edge = await edge_factory(user_rate=0.01, user_burst=2)
    headers = bearer(edge)
    statuses = []
    for _ in range(3):
        async with http.get(f"{edge.url}/api/tasks/t1", headers=headers) as resp:
            statuses.append(resp.status)
            retry = resp.headers.get("Retry-After")
    assert statuses == [200, 200, 429] and int(retry) >= 1
    status, _ = await get(http, edge, "/api/tasks/t1", bearer(edge, user="bob"))
    assert status == 200


async def test_cors_allows_configured_origins_only(edge, http):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    async with http.options(f"{edge.url}/api/chat/start", headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    evil = {**preflight, "Origin": "https://evil.example"}
    async with http.options(f"{edge.url}/api/chat/start", headers=evil) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.get(f"{edge.url}/api/tasks/t1", headers={"Origin": ORIGIN}) as resp:
        assert resp.status == 401  # errors carry CORS headers too, so browsers can read them
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    async with http.get(f"{edge.url}/health/live", headers={"Origin": "https://evil.example"}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_readiness_follows_jetstream(edge_factory, responder, http, nc, nats_server):
    edge = await edge_factory(health_check_timeout=5.0)
    assert (await get(http, edge, "/health/live"))[0] == 200
    status, body = await get(http, edge, "/health/ready")
    assert (status, body["error"]["code"]) == (503, "unavailable")  # no stream yet
    await nc.jetstream().add_stream(events_stream_config(edge.settings, SUBJECTS))
    status, body = await get(http, edge, "/health/ready")
    assert (status, body["error"]["code"]) == (503, "unavailable")  # no KV buckets yet
    await ensure_resources(nc.jetstream(), edge.settings, SUBJECTS)
    assert (await get(http, edge, "/health/ready"))[0] == 200
    nats_server.stop()
    status, body = await get(http, edge, "/health/ready")
    assert (status, body["error"]["code"]) == (503, "unavailable")  # NATS gone
    assert (await get(http, edge, "/health/live"))[0] == 200


async def test_dev_token_route_exists_only_in_dev(edge_factory, responder, http):
    dev = await edge_factory(dev_token_route=True)
    status, body = await get(http, dev, "/api/dev/token?tenant_id=t1&user_id=u1")
    assert status == 200 and body["tenant_id"] == "t1"
    status, _ = await get(http, dev, "/api/tasks/x1", {"Authorization": f"Bearer {body['token']}"})
    assert status == 200
    assert (await get(http, dev, "/api/dev/token?user_id=bad%20id"))[0] == 400
    assert (await get(http, await edge_factory(), "/api/dev/token"))[0] == 404
    prod = await edge_factory(
        env="prod",
        jwt_secret="p" * 48,
        cors_origins="https://a.example",
        ws_origins="https://a.example",
    )
    assert (await get(http, prod, "/api/dev/token"))[0] == 404


async def test_the_page_is_served(edge, http):
    async with http.get(f"{edge.url}/") as resp:
        assert resp.status == 200 and "<html" in (await resp.text()).lower()


async def test_stop_releases_the_port(edge_factory, responder, http):
    edge = await edge_factory()
    url = edge.url
    await edge.stop()
    with pytest.raises(aiohttp.ClientError):
        async with http.get(f"{url}/health/live"):
            pass


async def test_metrics_are_served_in_prometheus_format_when_enabled(nc, responder, http):
    reader = InMemoryMetricReader()
    telemetry = Telemetry(None, MeterProvider(metric_readers=[reader]), reader)
    edge = Edge(
        settings(metrics_prometheus=True, user_rate=0.01, user_burst=1), nc, SUBJECTS,
        telemetry=telemetry,
    )  # fmt: skip
    await edge.start()
    try:
        for _ in range(2):
            await get(http, edge, "/api/tasks/t1", bearer(edge))
        async with http.get(f"{edge.url}/metrics") as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            text = await resp.text()
        assert 'orchestrator_rate_limit_rejections_total{scope="user"} 1' in text
    finally:
        await edge.stop()
