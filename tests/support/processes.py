"""`orchestrator run` as a real child process; where its edge listens, when it is ready, how much
memory it holds."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
from conftest import wait_until

from orchestrator.service.runtime.nats_server import free_port
from support.child_process import ChildProcess


class OrchestratorProcess(ChildProcess):
    """`orchestrator run` as a real child process (test timings), to be stopped or killed -9."""

    def __init__(self, nats_url: str, log: Path, role: str = "service", **env: str) -> None:
        super().__init__([], log, {
            "ORCH_NATS_URL": nats_url,
            "ORCH_EXECUTION_TIMEOUT": "2",
            "ORCH_EXECUTION_BACKOFF_INITIAL": "0.05",
            "ORCH_TASK_LEASE": "3",
            "ORCH_SHUTDOWN_GRACE": "2",
            "ORCH_EDGE_PORT": "0",
            **env,
        })  # fmt: skip
        self.role = role

    def start(self, *args: str) -> OrchestratorProcess:
        """`orchestrator <args>` (default `run --role <role>`), not waiting for it to be ready."""
        command = args or ("run", "--role", self.role)
        self.argv = [sys.executable, "-m", "orchestrator.service.runtime.cli", *command]
        self.spawn()
        return self


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
