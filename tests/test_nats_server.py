"""The tests' and the embedded default's nats-server is a real process with JetStream."""

from __future__ import annotations

import nats

from orchestrator.service.runtime.nats_server import NatsServer


async def test_server_runs_jetstream_and_keeps_its_store_across_restart(nats_server: NatsServer):
    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().create_key_value(bucket="probe")
    await kv.put("k", b"v")
    await nc.close()

    nats_server.restart()

    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().key_value("probe")
    assert (await kv.get("k")).value == b"v"
    await nc.close()
