"""The orchestrator under test: `orchestrator run` and `orchestrator agent`, and edge JWTs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jwt
import msgspec
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout

from orchestrator.codecs.execution_messages import ExecutionAgent, ExecutionRequest
from orchestrator.service.runtime.nats_server import free_port
from orchestrator.service.store.streams import ensure_resources
from orchestrator.service.store.turns import queue_key
from orchestrator.subjects import Subjects

from .chat_client import BenchError, NatsChat
from .children import Child, port_open
from .driver import Bench
from .systems import (
    AGENT_ID,
    BENCH_ACTION_CONCURRENCY,
    BENCH_INFLIGHT_PER_USER,
    TENANT,
    system_settings,
    system_subjects,
)

JWT_SECRET = "bench-secret-bench-secret-bench-secret-0123"
# Edge limits sized for load from few users; the bench measures capacity, not the rate limiter.
UNLIMITED = "1000000"


class Unavailable(RuntimeError):
    """`orchestrator run`, `agent` or `token` is not there yet."""


def executable() -> str:
    beside = Path(sys.executable).with_name("orchestrator")
    found = str(beside) if beside.exists() else shutil.which("orchestrator")
    if not found:
        raise Unavailable("the `orchestrator` console script is not installed")
    return found


@dataclass
class Orchestrator:
    """The running orchestrator (with its edge) and reference agent."""

    run: Child
    agent: Child
    edge_port: int
    chat: NatsChat
    token_template: dict

    def token(self, user_id: str) -> str:
        """A JWT for `user_id`: the CLI's token with the user claim swapped, signed the same way."""
        claims = {
            key: (user_id if value == "__bench_user__" else value)
            for key, value in self.token_template.items()
        }
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")

    def ws_url(self, session_id: str, user_id: str) -> str:
        return f"ws://127.0.0.1:{self.edge_port}/ws/chat/{session_id}?token={self.token(user_id)}"


def _env(bench: Bench, edge_port: int) -> dict[str, str]:
    return {
        "ORCH_NATS_URL": bench.url,
        "ORCH_EDGE_HOST": "127.0.0.1",
        "ORCH_EDGE_PORT": str(edge_port),
        "ORCH_JWT_SECRET": JWT_SECRET,
        # `run` is production: it serves only with explicit origins (the bench sends none).
        "ORCH_CORS_ORIGINS": "http://127.0.0.1",
        "ORCH_WS_ORIGINS": "http://127.0.0.1",
        "ORCH_LOG_LEVEL": "WARNING",
        "ORCH_MAX_INFLIGHT_TASKS_PER_USER": str(BENCH_INFLIGHT_PER_USER),
        "ORCH_ACTION_CONCURRENCY": str(BENCH_ACTION_CONCURRENCY),
        # Every bench client opens sessions of one tenant, section after section.
        "ORCH_MAX_OPEN_SESSIONS_PER_TENANT": str(BENCH_INFLIGHT_PER_USER),
        # The idle-socket figure needs 10,000 sessions and sockets of the 64 session.start users.
        "ORCH_MAX_OPEN_SESSIONS_PER_USER": str(BENCH_INFLIGHT_PER_USER),
        "ORCH_WS_MAX_PER_USER": str(BENCH_INFLIGHT_PER_USER),
        # One edge holds them all (it still stays ORCH_EDGE_FD_RESERVE below its open-file limit,
        # which the bench raises to the hard limit).
        "ORCH_EDGE_MAX_CONNECTIONS": str(BENCH_INFLIGHT_PER_USER),
        "ORCH_WS_RATE": UNLIMITED,
        "ORCH_WS_BURST": UNLIMITED,
        "ORCH_USER_RATE": UNLIMITED,
        "ORCH_USER_BURST": UNLIMITED,
        "ORCH_AGENT_CHUNKS": str(bench.plan.chunks),
        # No artificial streaming delay: the bench measures the machinery, not a pretend model.
        "ORCH_AGENT_CHUNK_DELAY": "0",
    }


def token_template(env: dict[str, str]) -> dict:
    """Claims of a CLI-issued token with the user id replaced by a placeholder."""
    done = subprocess.run(
        [executable(), "token", "--tenant", TENANT, "--user", "benchuser0"],
        capture_output=True,
        timeout=30,
        check=False,
        env=env,
    )
    lines = [line for line in done.stdout.decode().split() if line.count(".") == 2]
    if done.returncode != 0 or not lines:
        raise Unavailable(f"`orchestrator token` failed: {done.stderr.decode()[-300:]}")
    claims = jwt.decode(lines[-1], options={"verify_signature": False})
    if "benchuser0" not in claims.values():
        raise Unavailable(f"cannot find the user claim in the token's claims {sorted(claims)}")
    return {k: ("__bench_user__" if v == "benchuser0" else v) for k, v in claims.items()}


def direct_request(subjects: Subjects, task_id: str, session_id: str) -> bytes:
    """An ExecutionRequest as the orchestrator would send it for the bench agent (its parts go
    to a stream subject nobody listens on: the reply is what is measured)."""
    request = ExecutionRequest(
        task_id=task_id, session_id=session_id, tenant_id=TENANT, user_id="u0",
        agent_id=AGENT_ID, agent=ExecutionAgent(), content="hi", attempt=1,
        stream_subject=subjects.execution_stream(task_id, 1, "bench"), heartbeat_interval=1.0,
    )  # fmt: skip
    return msgspec.json.encode(request)


async def start_edge(bench: Bench, orch: Orchestrator) -> tuple[Child, Callable[[str], str]]:
    """A second, edge-only `orchestrator run --role edge` on its own port, and its WS URL maker.

    The idle-socket figure is the edge's own: in `orchestrator run` the service's transient
    allocations for thousands of joins would sit in the same RSS.
    """
    port = free_port()
    args = [executable(), "run", "--role", "edge"]
    edge = Child("orchestrator-edge", args, bench.log_dir, _env(bench, port))
    bench.children.append(edge.start(False))
    await edge.wait_until(lambda: _port_ready(port), timeout=60)

    def ws_url(session_id: str, user_id: str) -> str:
        return f"ws://127.0.0.1:{port}/ws/chat/{session_id}?token={orch.token(user_id)}"

    return edge, ws_url


async def drop_turn_queues(bench: Bench, users: list[str]) -> None:
    """Forget the turns the send-path measurement queued (their work items were purged).

    Left in the users' turn queues, they would be re-driven (ORCH_TURN_REDRIVE_AFTER) and run
    beside every later measurement; their task records stay `queued`, as nothing reads them.
    """
    kv = await bench.js.key_value(system_settings("orchestrator", bench.url).tasks_bucket)
    for user in users:
        await kv.purge(queue_key(TENANT, user))


async def _port_ready(port: int) -> bool:
    return port_open(port)


async def start(bench: Bench) -> Orchestrator:
    """Start (once per run) the agent and `orchestrator run`; return once both answer (a command
    that is missing or fails exits, which `wait_until` reports as ChildFailed)."""
    if bench.orchestrator is not None:
        return bench.orchestrator
    settings = system_settings("orchestrator", bench.url)
    subjects = system_subjects(settings)
    buckets = await ensure_resources(bench.js, settings, subjects)
    await buckets.agent_configs.put(
        AGENT_ID, msgspec.json.encode({"tenant_id": TENANT, "access": "tenant"})
    )
    edge_port = free_port()
    env = _env(bench, edge_port)
    template = token_template(env)
    agent = Child("orchestrator-agent", [executable(), "agent"], bench.log_dir, env).start(False)
    bench.children.append(agent)
    run = Child("orchestrator-run", [executable(), "run"], bench.log_dir, env).start(False)
    bench.children.append(run)
    sid = f"benchprobe{uuid.uuid4().hex[:8]}"

    async def agent_ready() -> bool:
        try:
            payload = direct_request(subjects, uuid.uuid4().hex, sid)
            await bench.nc.request(subjects.execution_run, payload, timeout=2)
            return True
        except (NatsError, NatsTimeout, TimeoutError):
            return False

    chat = NatsChat(bench.nc, subjects)

    async def run_ready() -> bool:
        if not port_open(edge_port):
            return False
        try:
            await chat.start_session("u0")
            return True
        except (NatsError, NatsTimeout, TimeoutError, BenchError):
            return False

    await agent.wait_until(agent_ready, timeout=60)
    await run.wait_until(run_ready, timeout=60)
    handle = Orchestrator(run, agent, edge_port, chat, template)
    bench.orchestrator = handle
    return handle
