"""Test helpers: an in-process orchestrator stack, orchestrator subprocesses, and a bus caller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
from conftest import wait_until
from nats.aio.client import Client

from orchestrator.codecs.agent_configs import Access, AgentConfig
from orchestrator.codecs.execution_messages import ExecutionRequest
from orchestrator.codecs.wire import encode
from orchestrator.service.agent.reference_agent import ReferenceAgent
from orchestrator.service.runtime.instance import Orchestrator
from orchestrator.service.runtime.nats_server import NatsServer, free_port
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.subjects import Subjects

DEFAULT_AGENT = AgentSettings(chunk_delay=0.0)
FAST = dict(
    execution_timeout=2.0,
    execution_backoff_initial=0.05,
    execution_backoff_max=0.2,
    task_lease=3.0,
    nats_startup_timeout=10.0,
    shutdown_grace=2.0,
)


@dataclass
class Reply:
    """A decoded reply: `data` is the JSON body, `error` its error body if it failed."""

    data: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def error(self) -> dict[str, Any] | None:
        return self.data.get("error") if "Nats-Service-Error-Code" in self.headers else None

    @property
    def code(self) -> str | None:
        return self.error["code"] if self.error else None


async def call(
    nc: Client,
    action_type: str,
    data: dict[str, Any] | bytes,
    *,
    tenant: str = "dev",
    user: str = "alice",
    prefix: str = "nooble4",
    timeout: float = 10.0,
    **envelope: Any,
) -> Reply:
    """Send one DomainAction as any NATS client would (`nats req`)."""
    body = (
        data
        if isinstance(data, bytes)
        else json.dumps({"tenant_id": tenant, "user_id": user, "data": data, **envelope}).encode()
    )
    msg = await nc.request(f"{prefix}.orchestrator.{action_type}", body, timeout=timeout)
    return Reply(json.loads(msg.data) if msg.data else {}, dict(msg.headers or {}))


def client_of(stack: Stack, tenant: str = "dev", user: str = "alice", **kw: Any):
    """The Python client `orchestrator.client` for one caller, on the stack's connection."""
    from orchestrator.client import OrchestratorClient

    return OrchestratorClient(
        stack.nc, tenant_id=tenant, user_id=user, settings=stack.settings, **kw
    )


async def put_agent(nc: Client, agent_id: str, config: AgentConfig, bucket: str = "agent_configs"):
    kv = await nc.jetstream().key_value(bucket)
    await kv.put(agent_id, encode(config))


@dataclass
class Stack:
    """An orchestrator and the reference agent running in this process on a real server."""

    server: NatsServer
    settings: OrchestratorSettings
    nc: Client
    subjects: Subjects
    orchestrator: Orchestrator
    agent: ReferenceAgent | None

    @property
    def url(self) -> str:
        return self.server.url


def execution_request(
    task_id: str, attempt: int = 1, content: str = "hello there", stream_subject: str | None = None
) -> ExecutionRequest:
    """A request for the `echo` agent of tenant t1 in session s1, as the orchestrator sends it
    (its parts go to `stream_subject`, by default the attempt's subject with nonce `test`)."""
    return ExecutionRequest(
        task_id=task_id,
        session_id="s1",
        tenant_id="t1",
        user_id="u1",
        agent_id="echo",
        agent=AgentConfig(tenant_id="t1", name="Echo"),
        content=content,
        attempt=attempt,
        stream_subject=stream_subject or Subjects().execution_stream(task_id, attempt, "test"),
        heartbeat_interval=1.0,
    )


async def start_stack(
    server: NatsServer, agent: AgentSettings | None = DEFAULT_AGENT, **overrides
) -> Stack:
    settings = OrchestratorSettings(nats_url=[server.url], **{**FAST, **overrides})
    holder: list[Orchestrator] = []

    async def reconnected() -> None:
        if holder:
            await holder[0].on_reconnect()

    nc = await nats.connect(
        server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, reconnected_cb=reconnected
    )
    orchestrator = Orchestrator(nc, settings)
    holder.append(orchestrator)
    await orchestrator.start()
    subjects = Subjects(settings.subject_prefix)
    await put_agent(nc, "demo", AgentConfig(tenant_id="dev", name="Demo", access=Access.TENANT))
    ref = None
    if agent is not None:
        ref = ReferenceAgent(nc, subjects, agent)
        await ref.start()
    return Stack(server, settings, nc, subjects, orchestrator, ref)


async def stop_stack(stack: Stack) -> None:
    if stack.agent is not None:
        await stack.agent.stop()
    await stack.orchestrator.stop()
    await stack.nc.close()


class OrchestratorProcess:
    """`orchestrator run` as a real child process, to be stopped or killed with -9."""

    def __init__(self, nats_url: str, log: Path, role: str = "service", **env: str) -> None:
        self.env = {
            **os.environ,
            "ORCH_NATS_URL": nats_url,
            "ORCH_EXECUTION_TIMEOUT": "2",
            "ORCH_EXECUTION_BACKOFF_INITIAL": "0.05",
            "ORCH_TASK_LEASE": "3",
            "ORCH_SHUTDOWN_GRACE": "2",
            "ORCH_EDGE_PORT": "0",
            **env,
        }
        self.role = role
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, *args: str) -> OrchestratorProcess:
        command = args or ("run", "--role", self.role)
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.service.runtime.cli", *command],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        return self

    def kill(self) -> None:
        """`kill -9`."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 15.0) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None

    def close(self) -> None:
        self.kill()
        if getattr(self, "_log", None):
            self._log.close()


async def wait_for_service(
    nc: Client, count: int = 1, timeout: float = 20.0, name: str = "orchestrator"
) -> None:
    """Until `count` instances of the micro service `name` answer PING (`execution-<kind>` for
    an execution service)."""

    async def answered() -> bool:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
        seen = set()
        try:
            while True:
                msg = await sub.next_msg(timeout=0.3)
                if msg.data:  # an empty message is the server's "no responders" status
                    seen.add(json.loads(msg.data)["id"])
        except nats.errors.TimeoutError:
            pass
        await sub.unsubscribe()
        return len(seen) >= count

    await wait_until(answered, timeout, 0.2, f"{count} {name} instance(s) to answer PING")


# Load and fault helpers: many users chatting, and the checks that nothing acknowledged was lost.

FINAL = ("completed", "failed", "timed_out", "cancelled")
# What a caller may get instead of an answer while NATS or an instance is away: a client-side
# timeout or no-responders, never a hang.
TRANSPORT_FAILURES = (nats.errors.TimeoutError, nats.errors.NoRespondersError)


@dataclass(frozen=True)
class Acked:
    """A chat message the orchestrator acknowledged: it must end with exactly one answer."""

    user: str
    session_id: str
    task_id: str
    tenant: str = "dev"


async def connect_client(*urls: str) -> Client:
    """A test client that tries `urls` in order and reconnects forever."""
    return await nats.connect(
        list(urls), max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2,
        dont_randomize=True,
    )  # fmt: skip


async def seed_demo_agent(nc: Client, timeout: float = 20.0) -> None:
    """Store the `demo` agent once an orchestrator has created the bucket (JetStream may lag)."""

    async def stored() -> bool:
        try:
            await put_agent(nc, "demo", AgentConfig(tenant_id="dev", name="Demo"))
        except (nats.errors.Error, nats.js.errors.APIError):
            return False
        return True

    await wait_until(stored, timeout, 0.2, "the demo agent to be stored")


async def open_sessions(nc: Client, users: list[str], tenant: str = "dev") -> dict[str, str]:
    """One session with the `demo` agent per user: {user: session_id}."""
    sessions: dict[str, str] = {}
    for start in range(0, len(users), 50):
        batch = users[start : start + 50]
        replies = await asyncio.gather(
            *(call(nc, "session.start", {"agent_id": "demo"}, tenant=tenant, user=u) for u in batch)
        )
        for user, reply in zip(batch, replies, strict=True):
            assert reply.error is None, reply.data
            sessions[user] = reply.data["session_id"]
    return sessions


async def session_log(nc: Client, user: str, session_id: str, tenant: str = "dev") -> list[dict]:
    """Every stored event of a session, page by page."""
    events: list[dict] = []
    after = 0
    for _ in range(1000):
        page = await call(nc, "session.events", {"session_id": session_id, "after_seq": after},
                          tenant=tenant, user=user)  # fmt: skip
        assert page.error is None, page.data
        events += page.data["events"]
        after = page.data["last_seq"]
        if not page.data["more"]:
            return events
    raise AssertionError(f"session {session_id} has too many events")


def assert_final_attempt_is_the_answer(log: list[dict], task_id: str) -> None:
    """In a session's events: no part of the task stored twice, and its final attempt's chunks,
    joined, are its `chat.response`."""
    events = [r["event"] for r in log if r["event"].get("task_id") == task_id]
    chunks = [e for e in events if e["type"] == "chat.chunk"]
    keys = [(c["attempt"], c["index"]) for c in chunks]
    assert len(keys) == len(set(keys)), keys
    [response] = [e for e in events if e["type"] == "chat.response"]
    final = [c["content"] for c in chunks if c["attempt"] == response["attempt"]]
    assert "".join(final) == response["content"], (final, response)


async def wait_all_final(nc: Client, acked: list[Acked], timeout: float = 40.0) -> dict[str, dict]:
    """Until every acknowledged task is in a final state; returns {task_id: task view}."""
    final: dict[str, dict] = {}
    last: dict[str, object] = {}

    async def all_final() -> bool:
        pending = [a for a in acked if a.task_id not in final]
        replies = await asyncio.gather(
            *(call(nc, "task.get", {"task_id": a.task_id}, tenant=a.tenant, user=a.user,
                   timeout=3) for a in pending[:200]),
            return_exceptions=True,
        )  # fmt: skip
        for item, reply in zip(pending, replies, strict=False):
            last[item.task_id] = reply.data if isinstance(reply, Reply) else reply
            if isinstance(reply, Reply) and reply.data.get("status") in FINAL:
                final[item.task_id] = reply.data
        return len(final) == len(acked)

    def stuck() -> str:
        left = {t: last.get(t) for t in {a.task_id for a in acked} - set(final)}
        return f"{len(left)} acknowledged tasks to finish: {left}"

    await wait_until(all_final, timeout, 0.3, stuck)
    return final


async def assert_answered_exactly_once(
    nc: Client, acked: list[Acked], timeout: float = 40.0
) -> dict[str, dict]:
    """Each acknowledged task completed, with one `message.accepted` and one `chat.response`.

    Every other task found in those sessions (a message whose reply was lost) is answered at
    most once too. Returns the final task views.
    """
    final = await wait_all_final(nc, acked, timeout)
    failed = {t: v for t, v in final.items() if v["status"] != "completed"}
    assert not failed, failed
    by_session: dict[tuple[str, str, str], list[Acked]] = {}
    for item in acked:
        by_session.setdefault((item.tenant, item.user, item.session_id), []).append(item)
    for (tenant, user, session_id), items in by_session.items():
        log = await session_log(nc, user, session_id, tenant)
        responses: dict[str, int] = {}
        accepted: dict[str, int] = {}
        for record in log:
            event = record["event"]
            if event["type"] == "chat.response":
                responses[event["task_id"]] = responses.get(event["task_id"], 0) + 1
            elif event["type"] == "message.accepted":
                accepted[event["task_id"]] = accepted.get(event["task_id"], 0) + 1
        for item in items:
            assert accepted.get(item.task_id) == 1, (item, accepted)
            assert responses.get(item.task_id) == 1, (item, responses)
        assert all(count == 1 for count in responses.values()), responses
        assert all(count == 1 for count in accepted.values()), accepted
    return final


class ChatLoad:
    """Users sending messages one after another until `per_user` of them are acknowledged.

    Like a real client, a user backs off (up to a second) after a failed send, and makes at most
    `max_attempts` sends; what every send got back is recorded.
    """

    def __init__(
        self, nc: Client, sessions: dict[str, str], per_user: int, pause: float = 0.1,
        max_attempts: int | None = None,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.sessions = sessions
        self.per_user = per_user
        self.pause = pause
        self.max_attempts = max_attempts or 20 * per_user
        self.acked: list[Acked] = []
        self.refused: list[str] = []
        self.lost: list[type[BaseException]] = []

    async def run(self, timeout: float = 2.0) -> None:
        await asyncio.gather(*(self._user(u, s, timeout) for u, s in self.sessions.items()))

    async def _user(self, user: str, session_id: str, timeout: float) -> None:
        acked = failures = 0
        for i in range(self.max_attempts):
            if acked == self.per_user:
                return
            failures += 1
            try:
                reply = await call(self.nc, "chat.send",
                                   {"session_id": session_id, "content": f"{user} says {i}"},
                                   user=user, timeout=timeout)  # fmt: skip
            except TRANSPORT_FAILURES as exc:
                self.lost.append(type(exc))
            else:
                if reply.error is None:
                    acked += 1
                    failures = 0
                    self.acked.append(Acked(user, session_id, reply.data["task_id"]))
                else:
                    self.refused.append(reply.code or "")
            await asyncio.sleep(min(self.pause * 2**failures, 1.0))


async def wait_every_stored_task_final(
    nc: Client, bucket: str = "tasks", timeout: float = 40.0
) -> int:
    """Until no task in the bucket is queued or running (acknowledged or not); returns the count."""
    kv = await nc.jetstream().key_value(bucket)
    open_tasks: list[str] = []
    count = 0

    async def none_open() -> bool:
        nonlocal count
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        # Task keys have three tokens; turn queues and send receipts (four) live beside them.
        keys = [key for key in keys if key.count(".") == 2]
        open_tasks.clear()
        for key in keys:
            entry = await kv.get(key)
            if entry.value and json.loads(entry.value).get("status", "queued") not in FINAL:
                open_tasks.append(key)
        count = len(keys)
        return not open_tasks

    await wait_until(none_open, timeout, 0.3, lambda: f"tasks to finish: {open_tasks}")
    return count


# Edge processes: where one listens, when it is ready, how much memory it holds.


def edge_process(
    nats_url: str, log: Path, role: str = "edge", **env: str
) -> tuple[OrchestratorProcess, str]:
    """`orchestrator run --role <role>` (not started) serving its edge on a free port; its URL."""
    port = free_port()
    proc = OrchestratorProcess(nats_url, log, role=role, ORCH_EDGE_PORT=str(port), **env)
    return proc, f"http://127.0.0.1:{port}"


async def ready_status(http: aiohttp.ClientSession, base_url: str) -> int | None:
    """The status of `GET /health/ready`, or None while nothing answers on the port."""
    try:
        async with http.get(f"{base_url}/health/ready", timeout=aiohttp.ClientTimeout(5)) as resp:
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def wait_ready_status(
    http: aiohttp.ClientSession, base_url: str, status: int = 200, timeout: float = 30.0
) -> None:
    """Until `/health/ready` answers `status`."""
    seen: list[int | None] = [None]

    async def answers() -> bool:
        seen[0] = await ready_status(http, base_url)
        return seen[0] == status

    await wait_until(answers, timeout, 0.1, lambda: f"{base_url}/health/ready {status}: {seen[0]}")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (`VmRSS` in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@contextlib.asynccontextmanager
async def running_agent(nc: Client, **settings: Any) -> AsyncIterator[ReferenceAgent]:
    """A reference agent on `nc` (chunks without delay unless told), stopped afterwards."""
    agent = ReferenceAgent(nc, Subjects(), AgentSettings(**{"chunk_delay": 0.0, **settings}))
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop(grace=1.0)


def pem_pair(directory: Path, key: Any, name: str) -> tuple[Path, Path]:
    """`key` (RSA or EC) as PEM files: (private, public)."""
    from cryptography.hazmat.primitives import serialization

    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public
