"""Connecting to NATS: wait for it at start-up, saying what for, then reconnect forever."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
from loguru import logger
from nats.aio.client import Client

from orchestrator.codecs.errors import StartupFailed
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.subjects import Role
from orchestrator.subjects.permissions import inbox_prefix

Callback = Callable[[], Awaitable[None]]
DEFAULT_INBOX_PREFIX = "_INBOX"


def connection_inbox(settings: OrchestratorSettings, role: Role | None = None) -> str:
    """The inbox prefix of a connection: each role may subscribe only to its own.

    ORCH_NATS_INBOX_PREFIX if set, else the given role's, else that of the role named by
    ORCH_NATS_USER, else NATS' default (a server without permissions).
    """
    if settings.nats_inbox_prefix:
        return settings.nats_inbox_prefix
    if role is None and settings.nats_user in {r.value for r in Role}:
        role = Role(settings.nats_user)
    return inbox_prefix(role) if role is not None else DEFAULT_INBOX_PREFIX


async def connect(
    settings: OrchestratorSettings,
    servers: list[str],
    name: str,
    *,
    on_reconnect: Callback | None = None,
    on_disconnect: Callback | None = None,
    role: Role | None = None,
    inbox: str | None = None,
    login: tuple[str, str] | None = None,
) -> Client:
    """Connect to `servers`, waiting up to `nats_startup_timeout` seconds for them to answer.

    The connection's inbox prefix is `inbox`, else `connection_inbox(settings, role)`; `login`
    (user, password) replaces the configured credentials (the embedded server's generated ones).

    nats-py retries the first connection itself (every `nats_reconnect_wait` seconds, as it will
    every reconnect: forever, where its default gives up after 60 attempts); until the first
    connection succeeds each failure is logged as what start-up is waiting for.
    """
    connected = False

    async def error_cb(exc: Exception) -> None:
        if connected:
            logger.warning("nats client {}: {}", name, exc)
        else:
            logger.info("waiting for NATS at {} ({})", ", ".join(servers), exc)

    async def reconnected_cb() -> None:
        logger.info("nats client {} reconnected to {}", name, client.connected_url)
        if on_reconnect:
            await on_reconnect()

    async def disconnected_cb() -> None:
        if connected and not (client.is_closed or client.is_draining):
            logger.warning("nats client {} disconnected", name)
        if on_disconnect:
            await on_disconnect()

    options: dict = {
        "servers": servers,
        "name": name,
        "connect_timeout": settings.nats_connect_timeout,
        "reconnect_time_wait": settings.nats_reconnect_wait,
        "max_reconnect_attempts": -1,
        "allow_reconnect": True,
        "drain_timeout": max(settings.shutdown_grace, 1.0),
        "error_cb": error_cb,
        "reconnected_cb": reconnected_cb,
        "disconnected_cb": disconnected_cb,
        "inbox_prefix": inbox or connection_inbox(settings, role),
    }
    if login is not None:
        options["user"], options["password"] = login
    elif settings.nats_user:
        options["user"] = settings.nats_user
    if login is None and settings.nats_password:
        options["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token:
        options["token"] = settings.nats_token.get_secret_value()
    if settings.nats_creds:
        options["user_credentials"] = str(settings.nats_creds)
    try:
        client = await asyncio.wait_for(nats.connect(**options), settings.nats_startup_timeout)
    except TimeoutError:
        raise StartupFailed(
            f"NATS at {', '.join(servers)} did not answer within "
            f"{settings.nats_startup_timeout}s (ORCH_NATS_STARTUP_TIMEOUT); check ORCH_NATS_URL"
        ) from None
    connected = True
    return client
