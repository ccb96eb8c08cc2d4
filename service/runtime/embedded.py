"""The embedded default: a nats-server the program starts itself, JetStream in a local folder.

It runs the same trust zones as a deployed server (accounts and grants rendered from
subjects/permissions.py), with a password per role generated at each start: any other local
process is refused. The passwords are written to `<data dir>/credentials.json` (mode 0600) for
the `nats` CLI and local tools; they die with the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from orchestrator.codecs.errors import PortInUse
from orchestrator.service.runtime.nats_server import NatsServer, free_port
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.subjects import Role, Subjects
from orchestrator.subjects.nats_conf import render_accounts
from orchestrator.subjects.permissions import Resources, inbox_prefix

CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True)
class EmbeddedCredentials:
    """One generated password per role (and the system user) for one start of the server."""

    passwords: dict[Role, str]
    sys_password: str

    @classmethod
    def generate(cls) -> EmbeddedCredentials:
        # A leading letter keeps nats-server from reading the value as a number or a size.
        def new() -> str:
            return f"p{secrets.token_hex(24)}"

        return cls({role: new() for role in Role}, new())

    def login(self, role: Role) -> tuple[str, str]:
        """(user, password) of `role`."""
        return role.value, self.passwords[role]

    def write(self, path: Path, url: str) -> None:
        """The credentials as JSON, readable by this user only."""
        doc = {
            "url": url,
            "users": {
                role.value: {"password": pw, "inbox_prefix": inbox_prefix(role)}
                for role, pw in self.passwords.items()
            },
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out, indent=2)


def _resources(settings: OrchestratorSettings) -> Resources:
    return Resources(
        events_stream=settings.events_stream,
        work_stream=settings.work_stream,
        sessions_bucket=settings.sessions_bucket,
        tasks_bucket=settings.tasks_bucket,
        agent_configs_bucket=settings.agent_configs_bucket,
        session_slots_bucket=settings.session_slots_bucket,
    )


def embedded_server(
    settings: OrchestratorSettings, credentials: EmbeddedCredentials, port: int | None = None
) -> NatsServer:
    """A server configured from the settings (its max payload matches the message size limit).

    Start it from the main thread: it is tied to the thread that starts it and stops when the
    program dies, however it dies.
    """
    data = settings.embedded_data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    config = data / "nats-server.conf"
    accounts = render_accounts(
        Subjects(settings.subject_prefix),
        lambda role: json.dumps(credentials.passwords[role]),
        json.dumps(credentials.sys_password),
        _resources(settings),
    )
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(
            "# Written by the orchestrator at each start; edit the settings, not this file.\n"
            f"max_payload: {settings.max_message_bytes}\n"
            f'jetstream {{ store_dir: "{data / "jetstream"}" }}\n' + accounts
        )
    return NatsServer(
        data,
        host=settings.embedded_host,
        port=settings.embedded_port if port is None else port,
        config_file=config,
        ready_timeout=settings.nats_startup_timeout,
        die_with_parent=True,
    )


def start_embedded(
    settings: OrchestratorSettings,
    credentials: EmbeddedCredentials,
    stops: contextlib.ExitStack,
    *,
    any_port: bool = False,
) -> NatsServer:
    """Start the embedded server; it is running and listening on its `url` when this returns.

    Each server's stop is pushed on `stops` before the server starts, so a signal at any instant
    (even as this returns) leaves no server behind once `stops` closes. When `ORCH_EMBEDDED_PORT`
    is taken (often by a NATS user's own server on 4222), `any_port` (the `dev` command) moves to
    a free port; otherwise start-up fails naming the port and the setting. Either way the program
    never talks to a server it did not start.
    """
    server = embedded_server(settings, credentials)
    stops.callback(_stop, server)
    try:
        return server.start()
    except PortInUse as exc:
        if not any_port:
            raise PortInUse(
                f"the embedded nats-server cannot listen on {exc.host}:{exc.port}: the port is "
                "in use (another nats-server?); set ORCH_EMBEDDED_PORT to a free port (0 picks "
                "one), or ORCH_NATS_URL to use that server",
                exc.host,
                exc.port,
            ) from None
        port = free_port(settings.embedded_host)
        logger.warning(
            "port {} on {} is in use (another nats-server?): the embedded nats-server uses {}",
            exc.port, exc.host, port,
        )  # fmt: skip
        server = embedded_server(settings, credentials, port)
        stops.callback(_stop, server)
        return server.start()


def _stop(server: NatsServer) -> None:
    running = server.running  # false if its start failed (and stopped it) or it exited by itself
    server.stop()  # either way: closes its log file
    if running:
        logger.info("embedded nats-server stopped")
