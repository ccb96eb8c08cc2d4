"""Test helpers: an in-process orchestrator stack, orchestrator subprocesses, and a bus caller."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from orchestrator.codecs.agents import Access, AgentConfig
from orchestrator.codecs.wire import encode
from orchestrator.service.agent.server import ReferenceAgent
from orchestrator.service.app import Orchestrator
from orchestrator.service.nats_server import NatsServer
from orchestrator.service.settings import AgentSettings, OrchestratorSettings
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
            [sys.executable, "-m", "orchestrator.service.cli", *command],
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


async def wait_for_service(nc: Client, count: int = 1, timeout: float = 20.0) -> None:
    """Until `count` orchestrator instances answer micro PING."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.PING.orchestrator", b"", reply=inbox)
        seen = set()
        try:
            while True:
                msg = await sub.next_msg(timeout=0.3)
                if msg.data:  # an empty message is the server's "no responders" status
                    seen.add(json.loads(msg.data)["id"])
        except nats.errors.TimeoutError:
            pass
        await sub.unsubscribe()
        if len(seen) >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{count} orchestrator instance(s) did not answer PING in {timeout}s")
