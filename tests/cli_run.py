"""Running the `orchestrator` command as a newcomer would: a real process, its output in a file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys

import nats
from conftest import wait_until

CLI = [sys.executable, "-m", "orchestrator.service.runtime.cli"]

# What `orchestrator run` (prod by default) needs before it serves its edge.
PROD_ENV = {
    "ORCH_JWT_SECRET": "p" * 48,
    "ORCH_CORS_ORIGINS": "https://chat.example.com",
    "ORCH_WS_ORIGINS": "https://chat.example.com",
}


def port_open(port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def stop(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM, and SIGKILL if it does not exit in time: a test never leaves a process behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def spawn(args: list[str], env: dict[str, str], log) -> subprocess.Popen:
    """`orchestrator <args>` with only `env` of the ORCH_ variables, output into `log`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.Popen(
        [*CLI, *args], env={**clean, **env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


async def wait_for_text(path, pattern: str, timeout: float = 30.0) -> re.Match:
    """The first match of `pattern` in the file at `path`, once it appears."""
    found: list[re.Match] = []

    def seen() -> bool:
        match = re.search(pattern, path.read_text(errors="replace"))
        if match:
            found.append(match)
        return bool(match)

    await wait_until(seen, timeout=timeout, message=f"{pattern!r} in {path.name}")
    return found[0]


async def embedded_ops(data_dir, url: str):
    """A client of the embedded server as its `ops` user (the per-start credentials file)."""
    path = data_dir / "credentials.json"
    await wait_until(path.exists, timeout=20, message="the embedded server's credentials")
    ops = json.loads(path.read_text())["users"]["ops"]
    return await nats.connect(
        url, user="ops", password=ops["password"], inbox_prefix=ops["inbox_prefix"],
        max_reconnect_attempts=-1, reconnect_time_wait=0.2,
    )  # fmt: skip
