"""The AsyncAPI document describes what really crosses the bus and the WebSocket: every message a
chat produces on a real stack (action requests and replies, session and live events, work items,
execution requests, stream parts) validates against the payload of a message of the channel whose
address matches its subject, and every frame of a WebSocket chat against the `ws.chat` channel."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import jsonschema
from conftest import wait_until
from edge_client import ChatClient
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from support.calls import call

from orchestrator.service.contracts import asyncapi_doc as asyncapi
from orchestrator.service.edge.auth import mint_token

BASE = "urn:asyncapi"


class Contract:
    """Looks a subject up among the document's channels and validates a body against it."""

    def __init__(self) -> None:
        self.doc = asyncapi.document()
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(BASE, resource)
        self.channels = [
            (re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^.]+", re.escape(ch["address"])) + "$"),
             key)
            for key, ch in self.doc["channels"].items()
            if ch["address"] is not None and ch["servers"] == [{"$ref": "#/servers/nats"}]
        ]  # fmt: skip

    def channel_of(self, subject: str) -> str:
        keys = [key for pattern, key in self.channels if pattern.match(subject)]
        assert len(keys) == 1, f"{subject} matches channels {keys}"
        return keys[0]

    def problems(self, channel: str, body: Any) -> list[str]:
        """Empty when `body` is one of `channel`'s messages; else why each message refused it."""
        why = []
        for name in self.doc["channels"][channel]["messages"]:
            pointer = f"{BASE}#/channels/{channel}/messages/{name}/payload"
            validator = jsonschema.Draft202012Validator({"$ref": pointer}, registry=self.registry)
            errors = [e.message[:160] for e in validator.iter_errors(body)]
            if not errors:
                return []
            why.append(f"{name}: {errors[0]}")
        return why


async def test_a_chats_traffic_matches_the_asyncapi_document(stack):
    contract = Contract()
    nc = stack.nc
    seen: list[tuple[str, Any]] = []

    async def capture(msg) -> None:
        seen.append((msg.subject, json.loads(msg.data) if msg.data else ""))

    subs = [
        await nc.subscribe(subject, cb=capture)
        for subject in ("nooble4.orchestrator.>", "nooble4.events.*", "nooble4.live.*",
                        "nooble4.execution.>", "nooble4.work.chat.*.*")
    ]  # fmt: skip
    replies: list[tuple[str, Any]] = []

    async def act(action: str, data: dict[str, Any]) -> dict[str, Any]:
        reply = await call(nc, action, data)
        replies.append((f"action.{action}.reply", reply.data))
        return reply.data

    try:
        sid = (await act("session.start", {"agent_id": "demo"}))["session_id"]
        asked = await act("chat.send", {"session_id": sid, "content": "/confirm deploy"})
        task_id = asked["task_id"]

        async def waiting() -> bool:
            return (await act("task.get", {"task_id": task_id}))["status"] == "input_required"

        await wait_until(waiting, message="the task asks for input")
        await act("task.respond", {"task_id": task_id, "content": "yes"})
        second = (await act("chat.send", {"session_id": sid, "content": "hello"}))["task_id"]

        async def answered() -> bool:
            return (await act("task.get", {"task_id": second}))["status"] == "completed"

        await wait_until(answered, message="the second task completes")
        await act("session.events", {"session_id": sid})
        await act("session.list", {})
        await act("agent.list", {})
        await act("session.update", {"session_id": sid, "metadata": {"k": "v"}})
        await act("task.cancel", {"task_id": second})  # ended: a conflict error reply
        await act("session.get", {"session_id": "nope"})  # a not_found error reply

        async def closed_seen() -> bool:
            return any(body.get("type") == "session.closed" for subject, body in seen
                       if subject.startswith("nooble4.live."))  # fmt: skip

        await act("session.close", {"session_id": sid})
        await wait_until(closed_seen, message="session.closed arrives live")
    finally:
        for sub in subs:
            await sub.unsubscribe()

    failures = []
    channels_seen = set()
    for subject, body in seen:
        channel = contract.channel_of(subject)
        channels_seen.add(channel)
        if problems := contract.problems(channel, body):
            failures.append((subject, body, problems))
    for channel, body in replies:
        channels_seen.add(channel)
        if problems := contract.problems(channel, body):
            failures.append((channel, body, problems))
    assert not failures, failures[:3]
    # The run went through every kind of channel it set out to check.
    for channel in ("session.events", "session.live", "work.chat", "execution.run",
                    "execution.stream", "action.chat.send", "action.task.cancel.reply",
                    "action.session.get.reply", "action.task.respond.reply"):  # fmt: skip
        assert channel in channels_seen, (channel, sorted(channels_seen))
    kinds = {body.get("type") for subject, body in seen if subject.startswith("nooble4.live.")}
    assert {"message.accepted", "task.status", "chat.chunk", "chat.response"} <= kinds


async def test_a_websocket_chats_frames_match_the_asyncapi_document(stack, edge):
    contract = Contract()
    sid = (await call(stack.nc, "session.start", {"agent_id": "demo"})).data["session_id"]
    sent: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        client = ChatClient(http, mint_token(edge.settings, "dev", "alice"), sid)
        ready = await client.connect(edge.url)

        async def send(frame: dict[str, Any]) -> None:
            sent.append(frame)
            await client.send(frame)

        def status_of(task_id: str) -> set[str]:
            return {f["data"]["status"] for f in client.of_type("task.status")
                    if f["data"]["task_id"] == task_id}  # fmt: skip

        try:
            await send({"type": "ping", "id": "p1"})
            await send({"type": "chat.message", "id": "m1", "data": {"content": "/confirm x"}})
            assert await client.wait(lambda: "m1" in client.acks(), timeout=30)
            task_id = client.acks()["m1"]["data"]["task_id"]
            assert await client.wait(lambda: "input_required" in status_of(task_id), timeout=30)
            respond = {"task_id": task_id, "content": "yes"}
            await send({"type": "task.respond", "id": "r1", "data": respond})
            assert await client.wait(lambda: "completed" in status_of(task_id), timeout=30)
            await send({"type": "task.cancel", "id": "c1", "data": {"task_id": task_id}})
            assert await client.wait(lambda: "c1" in client.errors(), timeout=30)  # it ended
            assert await client.wait(lambda: bool(client.of_type("pong")), timeout=30)
        finally:
            await client.close()
    frames = [{"type": "session.ready", "data": ready}, *client.frames]
    failures = [(f, p) for f in [*sent, *frames] if (p := contract.problems("ws.chat", f))]
    assert not failures, failures[:3]
    types = {f["type"] for f in frames}
    assert {"ack", "task", "error", "pong", "chat.chunk", "chat.response"} <= types, types
