"""An orchestrator and the reference agent running in this process on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client

from orchestrator.codecs.agent_configs import Access, AgentConfig
from orchestrator.codecs.execution_messages import ExecutionAgent, ExecutionRequest
from orchestrator.service.agent.reference_agent import ReferenceAgent
from orchestrator.service.runtime.instance import Orchestrator
from orchestrator.service.runtime.nats_server import NatsServer
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.subjects import Subjects
from support.calls import put_agent

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
        agent=ExecutionAgent(name="Echo"),
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


async def stop_stack(stack: Stack, timeout: float = 30.0) -> None:
    """Stop the agent, the orchestrator and the connection. A part that has not stopped after
    `timeout` fails the test by name, with every task's stack: a shutdown that hangs is a bug,
    and this says where (not a bare pytest-timeout later)."""
    parts: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("the orchestrator", stack.orchestrator.stop), ("its NATS connection", stack.nc.close),
    ]  # fmt: skip
    if stack.agent is not None:
        parts.insert(0, ("the reference agent", stack.agent.stop))
    for name, stop in parts:
        stopping = asyncio.ensure_future(stop())
        done, _ = await asyncio.wait({stopping}, timeout=timeout)
        if not done:
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(limit=8, file=stacks)
            stopping.cancel()
            raise AssertionError(f"{name} did not stop in {timeout}s; tasks:\n{stacks.getvalue()}")
        stopping.result()


@contextlib.asynccontextmanager
async def running_agent(nc: Client, **settings: Any) -> AsyncIterator[ReferenceAgent]:
    """A reference agent on `nc` (chunks without delay unless told), stopped afterwards."""
    agent = ReferenceAgent(nc, Subjects(), AgentSettings(**{"chunk_delay": 0.0, **settings}))
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop(grace=1.0)
