"""The embedded default: a nats-server the program starts itself, JetStream in a local folder."""

from __future__ import annotations

from loguru import logger

from orchestrator.codecs.errors import PortInUse
from orchestrator.service.runtime.nats_server import NatsServer, free_port
from orchestrator.service.runtime.settings import OrchestratorSettings


def embedded_server(settings: OrchestratorSettings, port: int | None = None) -> NatsServer:
    """A server configured from the settings (its max payload matches the message size limit).

    Start it from the main thread: it is tied to the thread that starts it and stops when the
    program dies, however it dies.
    """
    data = settings.embedded_data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    config = data / "nats-server.conf"
    config.write_text(
        "# Written by the orchestrator at each start; edit the settings, not this file.\n"
        f"max_payload: {settings.max_message_bytes}\n"
        f'jetstream {{ store_dir: "{data / "jetstream"}" }}\n'
    )
    return NatsServer(
        data,
        host=settings.embedded_host,
        port=settings.embedded_port if port is None else port,
        config_file=config,
        ready_timeout=settings.nats_startup_timeout,
        die_with_parent=True,
    )


def start_embedded(settings: OrchestratorSettings, *, any_port: bool = False) -> NatsServer:
    """Start the embedded server; it is running and listening on its `url` when this returns.

    When `ORCH_EMBEDDED_PORT` is taken (often by a NATS user's own server on 4222), `any_port`
    (the `dev` command) moves to a free port; otherwise start-up fails naming the port and the
    setting. Either way the program never talks to a server it did not start.
    """
    try:
        return embedded_server(settings).start()
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
        return embedded_server(settings, port).start()
