"""Shared fixtures: a real nats-server per test on a free loopback port, temp JetStream store."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import nats
import pytest
from nats.aio.client import Client

from orchestrator.service.runtime.nats_server import NatsServer

# Fixtures on the repository's nats.conf and k8s cluster config, shared by several modules.
pytest_plugins = ["support.nats_configs"]

# The suite runs as a development deployment (`orchestrator run` defaults to prod) with one
# known HS secret, so the orchestrator processes it starts accept the tokens it mints. Tests of
# the production defaults clear these themselves (tests/test_security_defaults.py).
TEST_JWT_SECRET = "test-secret-of-the-suite-0123456789abcdef"
os.environ.setdefault("ORCH_ENV", "dev")
os.environ.setdefault("ORCH_JWT_SECRET", TEST_JWT_SECRET)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream, stopped (or killed) after the test."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A plain nats-py client on the test server, reconnecting forever."""
    client = await nats.connect(
        nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2
    )
    try:
        yield client
    finally:
        await client.close()


async def wait_until(
    condition: Callable[[], Awaitable[bool] | bool],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds.

    `message` names what is awaited; a callable is asked only on failure, for details."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
async def stack(nats_server: NatsServer):
    """The orchestrator service and the reference agent, in-process, on the test server."""
    from support.stack import start_stack, stop_stack

    running = await start_stack(nats_server)
    try:
        yield running
    finally:
        await stop_stack(running)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client without a connection limit (some tests hold a thousand sockets)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture
async def edge(stack):
    """An edge on a free port in front of `stack` (modules needing other settings override it)."""
    from orchestrator.service.edge.edge_server import Edge

    edge = Edge(stack.settings.model_copy(update={"edge_port": 0}), stack.nc, stack.subjects)
    await edge.start()
    yield edge
    await edge.stop()
