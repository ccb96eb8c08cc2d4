"""Attacks and bad input against a real edge process (RS256-configured) on a real orchestrator.

After every attack the edge must still serve: the process runs, `/health/ready` is 200 and a new
client chats normally. The edge's log file (its stdout and stderr) must never hold a token.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from conftest import wait_until
from cryptography.hazmat.primitives.asymmetric import rsa
from edge_client import ChatClient, JoinRefused
from support.certificates import pem_pair
from support.processes import OrchestratorProcess, edge_process, rss_bytes, wait_ready_status
from tokens import claims, forge_hs256

from orchestrator.codecs.errors import CloseCode
from orchestrator.service.edge.auth import mint_token
from orchestrator.service.runtime.settings import DEV_JWT_SECRET, MiB, OrchestratorSettings

TIMEOUT = aiohttp.ClientTimeout(total=20)
DEEP = 100_000


def rsa_pem_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh RSA key pair as PEM files: (private, public)."""
    return pem_pair(directory, rsa.generate_private_key(65537, 2048), name)


@dataclass
class AttackedEdge:
    """The edge process under attack, its URL, its log, and settings that mint valid tokens."""

    proc: OrchestratorProcess
    url: str
    log: Path
    settings: OrchestratorSettings

    def token(self, user: str = "alice", tenant: str = "dev", **kwargs: Any) -> str:
        return mint_token(self.settings, tenant, user, **kwargs)

    def bearer(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token()}"}


@pytest.fixture
def edge(stack, tmp_path: Path) -> Iterator[AttackedEdge]:
    """An RS256 edge process on the in-process orchestrator of `stack`, logging at DEBUG."""
    private, public = rsa_pem_pair(tmp_path, "edge")
    env = {
        "ORCH_JWT_ALGORITHM": "RS256",
        "ORCH_JWT_PUBLIC_KEY": str(public),
        "ORCH_METRICS_PROMETHEUS": "true",
        "ORCH_LOG_LEVEL": "DEBUG",
        # The socket-drop test opens a thousand sockets as one user (the cap has its own test).
        "ORCH_WS_MAX_PER_USER": "2000",
    }
    proc, url = edge_process(stack.url, tmp_path / "edge.log", **env)
    proc.start()
    settings = OrchestratorSettings(
        jwt_algorithm="RS256", jwt_public_key=public, jwt_private_key=private
    )
    try:
        yield AttackedEdge(proc, url, tmp_path / "edge.log", settings)
    finally:
        proc.kill()


@pytest.fixture
async def ready_edge(edge: AttackedEdge, http) -> AttackedEdge:
    await wait_ready_status(http, edge.url)
    return edge


async def start_session(http, edge: AttackedEdge, token: str | None = None) -> str:
    async with http.post(
        f"{edge.url}/api/chat/start", json={"agent_id": "demo"}, headers=edge.bearer(token)
    ) as resp:
        assert resp.status == 201, await resp.text()
        return (await resp.json())["session_id"]


async def assert_still_serving(http, edge: AttackedEdge, user: str = "checker") -> None:
    """The process runs, is ready, and a new client gets its answer."""
    assert edge.proc.proc is not None and edge.proc.proc.poll() is None, "the edge died"
    await wait_ready_status(http, edge.url, timeout=10)
    token = edge.token(user)
    client = ChatClient(http, token, await start_session(http, edge, token))
    await client.connect(edge.url, after_seq=0)
    await client.chat("still there?", "check")
    assert await client.wait(lambda: bool(client.of_type("chat.response")), 20), client.frames
    assert client.of_type("chat.response")[0]["data"]["content"] == "[Demo] You said: still there?"
    await client.close()


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


async def joined(http, edge: AttackedEdge, user: str = "alice") -> ChatClient:
    token = edge.token(user)
    client = ChatClient(http, token, await start_session(http, edge, token))
    await client.connect(edge.url, after_seq=0)
    return client


async def test_an_oversized_body_is_413_and_an_oversized_frame_closes_with_1009(ready_edge, http):
    edge = ready_edge
    alice = await joined(http, edge)
    big = json.dumps({"content": "x" * (MiB + 1024)})
    async with http.post(
        f"{edge.url}/api/chat/sessions/{alice.session_id}/messages",
        data=big,
        headers={**edge.bearer(), "Content-Type": "application/json"},
        timeout=TIMEOUT,
    ) as resp:
        assert resp.status == 413
        assert (await error_of(resp))["code"] == "payload_too_large"
    await alice.send({"type": "chat.message", "data": {"content": "x" * (MiB + 1024)}})
    assert await alice.wait(lambda: not alice.connected, 10)
    assert alice.close_code == CloseCode.MESSAGE_TOO_BIG
    assert not alice.of_type("ack")
    await assert_still_serving(http, edge)


def nested(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


async def test_deeply_nested_json_is_a_validation_error_on_http_and_websocket(ready_edge, http):
    edge = ready_edge
    alice = await joined(http, edge)
    bodies = [
        ("/api/chat/start", nested()),
        ("/api/chat/start", f'{{"agent_id": "demo", "metadata": {nested()}}}'),
        (f"/api/chat/sessions/{alice.session_id}/messages", f'{{"content": {nested()}}}'),
    ]
    await assert_bodies_refused(http, edge, bodies)
    frames = [
        nested(),
        f'{{"type": "ping", "id": "p", "data": {{"deep": {nested()}}}}}',
        f'{{"type": "chat.message", "id": "c", "data": {{"content": {nested()}}}}}',
    ]
    for index, text in enumerate(frames):
        await alice.send_raw(text)
        assert await alice.wait(lambda i=index: len(alice.of_type("error")) > i, 10), alice.frames
        assert alice.of_type("error")[index]["data"]["error"]["code"] == "validation_error"
    # The same socket still works.
    await alice.send({"type": "ping", "id": "after"})
    assert await alice.wait(lambda: bool(alice.of_type("pong")), 10)
    assert alice.connected
    await alice.close()
    await assert_still_serving(http, edge)


async def assert_bodies_refused(http, edge, bodies: list[tuple[str, str | bytes]]) -> None:
    """Each (path, body) POSTed with a valid token is a 400 `validation_error`."""
    for path, body in bodies:
        async with http.post(
            f"{edge.url}{path}", data=body, headers=edge.bearer(), timeout=TIMEOUT
        ) as resp:
            assert resp.status == 400, (path, await resp.text())
            assert (await error_of(resp))["code"] == "validation_error"


async def test_invalid_utf8_is_refused_on_http_and_websocket(ready_edge, http):
    edge = ready_edge
    alice = await joined(http, edge)
    bodies = [
        ("/api/chat/start", b'{"agent_id": "\xc3\x28"}'),
        (f"/api/chat/sessions/{alice.session_id}/messages", b'{"content": "\xff\xfe hi"}'),
        (f"/api/chat/sessions/{alice.session_id}/messages", b"\xff" * 64),
    ]
    await assert_bodies_refused(http, edge, bodies)
    async with http.get(
        f"{edge.url}/api/chat/sessions/%FF%FE", headers=edge.bearer(), timeout=TIMEOUT
    ) as resp:
        assert resp.status in (400, 404), await resp.text()
        await error_of(resp)
    # A binary frame of invalid UTF-8 is answered with an error; the socket stays open.
    await alice.send_raw(b"\xff\xfe\xfd", binary=True)
    assert await alice.wait(lambda: bool(alice.of_type("error")), 10)
    assert alice.of_type("error")[0]["data"]["error"]["code"] == "validation_error"
    assert alice.connected
    # A text frame that is not UTF-8 breaks the WebSocket protocol itself: a clean close, 1007.
    await alice.send_raw(b'{"type": "ping", "id": "\xff"}')
    assert await alice.wait(lambda: not alice.connected, 10)
    assert alice.close_code == aiohttp.WSCloseCode.INVALID_TEXT
    await assert_still_serving(http, edge)


FLOOD = 300


async def test_a_flooding_user_is_rate_limited_while_another_user_is_served(ready_edge, http):
    edge = ready_edge
    mallory = await joined(http, edge, "mallory")
    bob = await joined(http, edge, "bob")
    mallory_auth = edge.bearer(edge.token("mallory"))

    async def flood_socket() -> None:
        for index in range(FLOOD):
            await mallory.chat("spam", f"f{index}")

    async def flood_http() -> list[int]:
        async def one() -> int:
            async with http.get(f"{edge.url}/api/chat/sessions", headers=mallory_auth) as resp:
                if resp.status == 429:
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert (await error_of(resp))["code"] == "rate_limited"
                return resp.status

        return await asyncio.gather(*(one() for _ in range(FLOOD)))

    async def bob_chats() -> None:
        for index in range(3):
            await bob.chat(f"hello {index}", f"b{index}")
            assert await bob.wait(lambda i=index: len(bob.of_type("chat.response")) > i, 20)
            async with http.get(
                f"{edge.url}/api/chat/sessions/{bob.session_id}",
                headers=edge.bearer(edge.token("bob")),
            ) as resp:
                assert resp.status == 200, await resp.text()

    _, statuses, _ = await asyncio.gather(flood_socket(), flood_http(), bob_chats())
    assert 429 in statuses and set(statuses) <= {200, 429}
    # Every flooded frame got its answer on the open socket, most of them `rate_limited` (the
    # connection's limit refuses a frame before reading it, so those errors carry no id).
    answered = lambda: len(mallory.acks()) + len(mallory.of_type("error")) == FLOOD  # noqa: E731
    assert await mallory.wait(lambda: answered() or not mallory.connected, 20)
    assert mallory.connected, mallory.close_code
    assert answered()
    codes = [e["data"]["error"]["code"] for e in mallory.of_type("error")]
    assert codes.count("rate_limited") > FLOOD // 2, codes
    assert not bob.of_type("error"), bob.of_type("error")
    assert [f["data"]["content"] for f in bob.of_type("chat.response")] == [
        f"[Demo] You said: hello {index}" for index in range(3)
    ]
    await asyncio.gather(mallory.close(), bob.close())
    await assert_still_serving(http, edge)


SOCKETS = 1000
OPEN_GAUGE = re.compile(r"^orchestrator_websockets_open(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


async def open_websockets(http, edge: AttackedEdge) -> int:
    """The edge's own count of open WebSockets, from its Prometheus metrics."""
    async with http.get(f"{edge.url}/metrics") as resp:
        text = await resp.text()
    found = OPEN_GAUGE.search(text)
    return int(float(found.group(1))) if found else 0


async def open_and_drop(http, edge: AttackedEdge, count: int) -> None:
    """`count` joined sockets on one session, then every TCP connection cut at once."""
    token = edge.token("crowd")
    session_id = await start_session(http, edge, token)
    clients = [ChatClient(http, token, session_id) for _ in range(count)]
    gate = asyncio.Semaphore(200)

    async def join(client: ChatClient) -> None:
        async with gate:
            await client.connect(edge.url, after_seq=0)

    await asyncio.gather(*(join(client) for client in clients))
    assert await open_websockets(http, edge) == count
    await asyncio.gather(*(client.drop() for client in clients))


async def wait_no_websockets(http, edge: AttackedEdge) -> None:
    async def none_open() -> bool:
        return await open_websockets(http, edge) == 0

    await wait_until(none_open, 30, 0.1, "every WebSocket to close")


async def test_a_thousand_sockets_dropped_at_once_leave_no_connection_or_memory_behind(
    ready_edge, http
):
    edge = ready_edge
    pid = edge.proc.proc.pid
    # The first burst grows CPython's and malloc's pools to their size for 1,000 sockets, and
    # they keep that memory; the baseline is taken after it, so growth after the next, equal
    # burst is what the sockets left behind.
    await open_and_drop(http, edge, SOCKETS)
    await wait_no_websockets(http, edge)
    await assert_still_serving(http, edge)
    baseline = rss_bytes(pid)

    await open_and_drop(http, edge, SOCKETS)
    await wait_no_websockets(http, edge)
    await assert_still_serving(http, edge)
    after = rss_bytes(pid)
    assert after < baseline + 30 * MiB, (baseline / MiB, after / MiB)


def bad_tokens(edge: AttackedEdge, tmp_path: Path) -> dict[str, str]:
    """Tokens for alice of tenant dev that an RS256 edge must refuse, by attack."""
    other_key, _ = rsa_pem_pair(tmp_path, "attacker")
    private = edge.settings.jwt_private_key.read_text()
    past = int(time.time()) - 3600
    return {
        "expired": jwt.encode(claims(iat=past - 60, nbf=past - 60, exp=past), private, "RS256"),
        "alg none": jwt.encode(claims(), None, algorithm="none"),
        "wrong key": jwt.encode(claims(), other_key.read_text(), algorithm="RS256"),
        "hs/rs confusion": forge_hs256(claims(), edge.settings.jwt_public_key.read_bytes()),
        "dev hs256 secret": jwt.encode(claims(), DEV_JWT_SECRET, algorithm="HS256"),
        "not a jwt": "not.a.jwt",
    }


def routes(session_id: str, task_id: str) -> list[tuple[str, str, dict | None]]:
    """Every authenticated HTTP entry: method, path, JSON body."""
    s, t = f"/api/chat/sessions/{session_id}", f"/api/tasks/{task_id}"
    return [
        ("POST", "/api/chat/start", {"agent_id": "demo"}),
        ("GET", "/api/chat/sessions", None),
        ("GET", s, None),
        ("GET", f"{s}/events", None),
        ("POST", f"{s}/messages", {"content": "hi"}),
        ("GET", t, None),
        ("POST", f"{t}/cancel", None),
        ("DELETE", s, None),
    ]


async def request(http, edge, method: str, path: str, body, token: str) -> tuple[int, dict]:
    async with http.request(
        method, f"{edge.url}{path}", json=body, headers=edge.bearer(token), timeout=TIMEOUT
    ) as resp:
        return resp.status, await resp.json()


async def test_forged_expired_and_foreign_tokens_are_refused_everywhere_and_never_logged(
    ready_edge, http, tmp_path
):
    edge = ready_edge
    alice = await joined(http, edge)
    await alice.chat("a task to attack", "m")
    assert await alice.wait(lambda: "m" in alice.acks(), 10)
    task_id = alice.acks()["m"]["data"]["task_id"]
    assert await alice.wait(lambda: bool(alice.of_type("chat.response")), 20)
    bad = bad_tokens(edge, tmp_path)
    foreign = edge.token("alice", tenant="evil")

    for attack, token in bad.items():
        for method, path, body in routes(alice.session_id, task_id):
            status, reply = await request(http, edge, method, path, body, token)
            assert (status, reply["error"]["code"]) == (401, "unauthorized"), (attack, path)
        with pytest.raises(JoinRefused) as refusal:
            await ChatClient(http, token, alice.session_id).connect(edge.url, after_seq=0)
        assert refusal.value.close_code == 4401, attack
        assert refusal.value.error["data"]["error"]["code"] == "unauthorized"
        await alice.send({"type": "auth.refresh", "id": attack, "data": {"token": token}})
        assert await alice.wait(lambda a=attack: a in alice.errors(), 10), attack
        assert alice.errors()[attack]["data"]["error"]["code"] == "unauthorized"
        assert alice.connected, attack

    # Another tenant's user with the same user id: alice's session and task do not exist for it.
    for method, path, body in routes(alice.session_id, task_id)[2:]:
        status, reply = await request(http, edge, method, path, body, foreign)
        assert (status, reply["error"]["code"]) == (404, "not_found"), path
    status, page = await request(http, edge, "GET", "/api/chat/sessions", None, foreign)
    assert status == 200 and alice.session_id not in json.dumps(page)
    with pytest.raises(JoinRefused) as refusal:
        await ChatClient(http, foreign, alice.session_id).connect(edge.url, after_seq=0)
    assert refusal.value.close_code == 4404
    await alice.send({"type": "auth.refresh", "id": "foreign", "data": {"token": foreign}})
    assert await alice.wait(lambda: not alice.connected, 10)
    assert alice.errors()["foreign"]["data"]["error"]["code"] == "forbidden"
    assert alice.close_code == 4403

    # Nothing the attacks tried happened: the session is open, the task finished normally.
    status, view = await request(
        http, edge, "GET", f"/api/chat/sessions/{alice.session_id}", None, edge.token()
    )
    assert (status, view["status"]) == (200, "open")
    status, task = await request(http, edge, "GET", f"/api/tasks/{task_id}", None, edge.token())
    assert (status, task["status"]) == (200, "completed")
    await assert_still_serving(http, edge)
    log = edge.log.read_text(errors="replace")
    for token in [*bad.values(), foreign, alice.token, edge.token("checker")]:
        assert token not in log
        signature = token.rsplit(".", 1)[-1]
        assert len(signature) < 16 or signature not in log
