"""The embedded default: a nats-server the program starts itself, JetStream in a local folder."""

from __future__ import annotations

from orchestrator.service.runtime.nats_server import NatsServer
from orchestrator.service.runtime.settings import OrchestratorSettings


def embedded_server(settings: OrchestratorSettings) -> NatsServer:
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
        port=settings.embedded_port,
        config_file=config,
        die_with_parent=True,
    )
