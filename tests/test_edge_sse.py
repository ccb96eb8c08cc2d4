"""Server-Sent Events (`GET /api/sessions/{id}/stream`) against a real orchestrator and NATS."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import nats
from conftest import wait_until
from support.calls import client_of
from support.stack import start_stack, stop_stack
from tcp_proxy import TcpProxy

from orchestrator.codecs.records import TaskStatus
from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.edge_server import Edge

TIMEOUT = 10.0


@dataclass
class SseEvent:
    """One parsed event: `id` (None if it had none), `event` name, JSON `data`."""

    id: str | None
    event: str
    data: dict[str, Any]


class SseReader:
    """Reads an open `text/event-stream` response event by event, counting heartbeats."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.heartbeats = 0

    async def next(self) -> SseEvent | None:
        """The next event; None when the server ended the stream."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(TIMEOUT):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    self.heartbeats += 1
                elif line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                elif fields:
                    return SseEvent(fields.get("id"), fields["event"], json.loads(fields["data"]))

    async def until(self, event: str, **data: Any) -> list[SseEvent]:
        """Every event up to the first `event` whose data holds `data` (inclusive)."""
        seen: list[SseEvent] = []
        for _ in range(1000):
            got = await self.next()
            assert got is not None, f"the stream ended before {event} {data}"
            seen.append(got)
            inner = got.data.get("data", {})
            if got.event == event and all(inner.get(k) == v for k, v in data.items()):
                return seen
        raise AssertionError(f"no {event} {data} in 1000 events")


def stream_url(edge: Edge, session_id: str) -> str:
    return f"{edge.url}/api/sessions/{session_id}/stream"


def bearer(edge: Edge, tenant: str = "dev", user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(edge.settings, tenant, user)}"}


async def completed(reader: SseReader, task_id: str) -> list[SseEvent]:
    return await reader.until("task.status", task_id=task_id, status="completed")


async def test_stream_replays_then_follows_live_events_with_their_seq_as_id(stack, edge, http):
    client = client_of(stack)
    sid = (await client.start_session("demo")).session_id
    first = await client.send(sid, "one")
    async with http.get(stream_url(edge, sid), headers=bearer(edge)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        reader = SseReader(resp)
        ready = await reader.next()
        assert ready.event == "session.ready" and ready.id is None
        assert ready.data["data"]["recovered"] is True and ready.data["data"]["after_seq"] == 0
        seen = await completed(reader, first.task_id)
        second = await client.send(sid, "two")  # sent while the stream is open: live
        seen += await completed(reader, second.task_id)
    stored = (await client.event_page(sid)).events
    assert [int(e.id) for e in seen] == [r.seq for r in stored]
    assert [e.event for e in seen] == [type(r.event).__struct_config__.tag for r in stored]
    # `data` is the WebSocket frame of the same name.
    assert all(e.data["seq"] == int(e.id) and e.data["type"] == e.event for e in seen)


async def test_last_event_id_resumes_after_it_and_wins_over_after_seq(stack, edge, http):
    client = client_of(stack)
    sid = (await client.start_session("demo")).session_id
    task = await client.send(sid, "hello")
    async with http.get(stream_url(edge, sid), headers=bearer(edge)) as resp:
        everything = (await completed(SseReader(resp), task.task_id))[1:]  # after ready
    middle = int(everything[2].id)
    expected = [e.id for e in everything if int(e.id) > middle]
    headers = {**bearer(edge), "Last-Event-ID": str(middle)}
    async with http.get(stream_url(edge, sid), params={"after_seq": "0"}, headers=headers) as resp:
        reader = SseReader(resp)
        ready = await reader.next()
        assert ready.data["data"]["after_seq"] == middle
        assert [e.id for e in await completed(reader, task.task_id)] == expected
    async with http.get(
        stream_url(edge, sid), params={"after_seq": str(middle)}, headers=bearer(edge)
    ) as resp:
        reader = SseReader(resp)
        await reader.next()
        assert [e.id for e in await completed(reader, task.task_id)] == expected


async def test_stream_needs_a_token_and_the_callers_own_session(stack, edge, http):
    sid = (await client_of(stack).start_session("demo")).session_id
    async with http.get(stream_url(edge, sid)) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    async with http.get(stream_url(edge, sid), headers=bearer(edge, user="mallory")) as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    async with http.get(
        stream_url(edge, sid), headers={**bearer(edge), "Last-Event-ID": "x"}
    ) as resp:
        assert resp.status == 400
    # EventSource cannot set headers: the token may come in the query, as on the WebSocket.
    token = mint_token(edge.settings, "dev", "alice")
    async with http.get(stream_url(edge, sid), params={"token": token}) as resp:
        assert resp.status == 200
        assert (await SseReader(resp).next()).event == "session.ready"


async def test_a_closed_session_ends_the_stream_and_a_resume_after_it_gets_204(stack, edge, http):
    client = client_of(stack)
    sid = (await client.start_session("demo")).session_id
    async with http.get(stream_url(edge, sid), headers=bearer(edge)) as resp:
        reader = SseReader(resp)
        await reader.until("session.started")
        await client.close_session(sid, "bye")
        closed = (await reader.until("session.closed"))[-1]
        assert closed.data["data"]["reason"] == "bye"
        assert await reader.next() is None  # the server ended it
    headers = {**bearer(edge), "Last-Event-ID": closed.id}
    async with http.get(stream_url(edge, sid), headers=headers) as resp:
        assert resp.status == 204  # EventSource stops reconnecting


async def test_a_quiet_stream_gets_heartbeats(stack, http):
    settings = stack.settings.model_copy(update={"edge_port": 0, "sse_heartbeat": 0.1})
    edge = Edge(settings, stack.nc, stack.subjects)
    await edge.start()
    try:
        sid = (await client_of(stack).start_session("demo")).session_id
        async with http.get(stream_url(edge, sid), headers=bearer(edge)) as resp:
            reader = SseReader(resp)
            await reader.until("session.started")
            for _ in range(100):  # nothing else happens in the session: only heartbeats come
                if reader.heartbeats >= 2:
                    break
                line = await asyncio.wait_for(resp.content.readline(), TIMEOUT)
                reader.heartbeats += line.startswith(b":")
            assert reader.heartbeats >= 2
    finally:
        await edge.stop()


async def test_edge_shutdown_ends_streams_with_an_error_event(stack, http):
    edge = Edge(stack.settings.model_copy(update={"edge_port": 0}), stack.nc, stack.subjects)
    await edge.start()
    sid = (await client_of(stack).start_session("demo")).session_id
    async with http.get(stream_url(edge, sid), headers=bearer(edge)) as resp:
        reader = SseReader(resp)
        await reader.until("session.started")
        stopping = asyncio.create_task(edge.stop())
        error = await reader.next()
        assert error.event == "error" and error.data["data"]["error"]["code"] == "unavailable"
        assert await reader.next() is None
        await stopping


async def test_stream_says_when_events_aged_out(nats_server, http):
    stack = await start_stack(nats_server, agent=None, events_max_per_session=100)
    edge = Edge(stack.settings.model_copy(update={"edge_port": 0}), stack.nc, stack.subjects)
    await edge.start()
    try:
        sid = (await client_of(stack).start_session("demo")).session_id
        js = stack.nc.jetstream()
        for index in range(120):
            await js.publish(stack.subjects.session_events(sid), b'{"type":"x","i":%d}' % index)
        async with http.get(stream_url(edge, sid), headers=bearer(edge)) as resp:
            ready = await SseReader(resp).next()
            assert ready.event == "session.ready" and ready.data["data"]["recovered"] is False
    finally:
        await edge.stop()
        await stop_stack(stack)


async def test_stream_catches_up_on_what_it_missed_while_the_edges_nats_was_away(stack, http):
    proxy = await TcpProxy(stack.server.host, stack.server.port).start()
    edges: list[Edge] = []

    async def reconnected() -> None:
        await edges[0].on_reconnect()

    nc = await nats.connect(
        proxy.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, reconnected_cb=reconnected
    )
    edge = Edge(stack.settings.model_copy(update={"edge_port": 0}), nc, stack.subjects)
    edges.append(edge)
    await edge.start()
    try:
        client = client_of(stack)
        sid = (await client.start_session("demo")).session_id
        async with http.get(stream_url(edge, sid), headers=bearer(edge)) as resp:
            reader = SseReader(resp)
            seen = await reader.until("session.started")
            proxy.cut()
            await wait_until(lambda: not nc.is_connected, message="the edge to lose NATS")
            missed = await client.send(sid, "while the edge is away")

            async def done() -> bool:
                return (await client.get_task(missed.task_id)).status is TaskStatus.COMPLETED

            await wait_until(done, message="the missed task to complete")
            proxy.restore()
            seen += await completed(reader, missed.task_id)
        stored = (await client.event_page(sid)).events
        assert [int(e.id) for e in seen[1:]] == [r.seq for r in stored]
    finally:
        await edge.stop()
        await nc.close()
        await proxy.stop()


async def test_stream_ends_with_unauthorized_when_its_token_expires(stack, edge, http):
    sid = (await client_of(stack).start_session("demo")).session_id
    # 6 s to open the stream in before the token ends: a loaded machine cannot race it.
    token = mint_token(edge.settings, "dev", "alice", ttl=6)
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(stream_url(edge, sid), headers=headers) as resp:
        reader = SseReader(resp)
        await reader.until("session.started")
        error = await reader.next()
        assert error.event == "error"
        assert error.data["data"]["error"]["code"] == "unauthorized"
        assert await reader.next() is None
