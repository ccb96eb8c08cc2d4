"""Connecting to NATS: wait for it at start-up with backoff, then reconnect forever."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
from loguru import logger
from nats.aio.client import Client
from nats.errors import NoServersError

from .settings import OrchestratorSettings

Callback = Callable[[], Awaitable[None]]


async def connect(
    settings: OrchestratorSettings,
    servers: list[str],
    name: str,
    *,
    on_reconnect: Callback | None = None,
    on_disconnect: Callback | None = None,
) -> Client:
    """Connect to `servers`, retrying with backoff for up to `nats_startup_timeout` seconds.

    Once connected the client reconnects forever (nats-py gives up after 60 attempts by default).
    """

    async def error_cb(exc: Exception) -> None:
        logger.warning("nats client {}: {}", name, exc)

    async def reconnected_cb() -> None:
        logger.info("nats client {} reconnected to {}", name, client.connected_url)
        if on_reconnect:
            await on_reconnect()

    async def disconnected_cb() -> None:
        logger.warning("nats client {} disconnected", name)
        if on_disconnect:
            await on_disconnect()

    options: dict = {
        "servers": servers,
        "name": name,
        "connect_timeout": settings.nats_connect_timeout,
        "reconnect_time_wait": settings.nats_reconnect_wait,
        "max_reconnect_attempts": -1,
        "drain_timeout": max(settings.shutdown_grace, 1.0),
        "allow_reconnect": True,
        "error_cb": error_cb,
        "reconnected_cb": reconnected_cb,
        "disconnected_cb": disconnected_cb,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
    if settings.nats_password:
        options["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token:
        options["token"] = settings.nats_token.get_secret_value()
    if settings.nats_creds:
        options["user_credentials"] = str(settings.nats_creds)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.nats_startup_timeout
    delay = 0.1
    while True:
        try:
            client = await nats.connect(**options)
            return client
        except (TimeoutError, NoServersError, OSError) as exc:
            if loop.time() + delay > deadline:
                raise ConnectionError(
                    f"NATS at {', '.join(servers)} did not answer within "
                    f"{settings.nats_startup_timeout}s (ORCH_NATS_STARTUP_TIMEOUT): {exc}"
                ) from exc
            logger.info("waiting for NATS at {} ({}); retrying in {:.1f}s", servers, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
