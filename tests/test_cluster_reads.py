"""Read-your-writes on a 3-node JetStream cluster, with stream leaders stepping down in between.

An action that answered has written to the stream leader's quorum; a follower may not have
applied it yet. Reads that must see those writes go to the leader, so `session.start` followed
by `session.get` and `session.events` succeeds every time, whichever replica leads by then.
"""

from __future__ import annotations

import json

import nats
import pytest
from cluster import NatsCluster
from conftest import wait_until
from support.calls import call, connect_client, put_agent

from orchestrator.codecs.agent_configs import AgentConfig
from orchestrator.service.runtime.instance import Orchestrator
from orchestrator.service.runtime.settings import OrchestratorSettings

ROUNDS = 15
STEPPED = ("KV_sessions", "SESSION_EVENTS")


@pytest.fixture
def cluster(tmp_path):
    nodes = NatsCluster(tmp_path / "cluster").start()
    try:
        yield nodes
    finally:
        nodes.kill()


async def step_down(nc, stream: str) -> None:
    """Make the stream's leader hand over (`$JS.API.STREAM.LEADER.STEPDOWN`)."""
    reply = await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=10)
    body = json.loads(reply.data)
    assert body.get("success"), body


async def leader_elected(nc, stream: str) -> None:
    """Until the stream has a leader again."""
    js = nc.jetstream(timeout=2)

    async def has_leader() -> bool:
        try:
            return (await js.stream_info(stream)).cluster.leader is not None
        except (nats.errors.TimeoutError, nats.js.errors.APIError):
            return False

    await wait_until(has_leader, timeout=20, message=f"a leader of {stream}")


async def test_a_started_session_is_readable_right_after_leader_step_downs(cluster):
    await cluster.wait_ready()
    n0, n1, n2 = cluster.urls
    settings = OrchestratorSettings(nats_url=[n0], replicas=3, nats_request_timeout=5.0)
    service_nc = await connect_client(n0, n1, n2)
    client = await connect_client(n2, n1, n0)
    orchestrator = Orchestrator(service_nc, settings)
    await orchestrator.start()
    try:
        await put_agent(client, "demo", AgentConfig(tenant_id="dev", name="Demo"))
        js = client.jetstream()
        for stream in (*STEPPED, "KV_tasks"):
            # Direct gets would let any replica answer, a lagging one included.
            assert (await js.stream_info(stream)).config.allow_direct is False, stream
        for round_ in range(ROUNDS):
            started = await call(client, "session.start", {"agent_id": "demo"}, user=f"u{round_}")
            assert started.error is None, started.data
            sid = started.data["session_id"]
            for stream in STEPPED:
                await step_down(client, stream)
            # Read at once: the new leaders may still be being elected.
            got = await call(client, "session.get", {"session_id": sid}, user=f"u{round_}")
            assert got.error is None, (round_, got.data)
            page = await call(client, "session.events", {"session_id": sid}, user=f"u{round_}")
            assert page.error is None, (round_, page.data)
            types = [record["event"]["type"] for record in page.data["events"]]
            assert types == ["session.started"], (round_, page.data)
            for stream in STEPPED:  # the next round writes: let the elections finish
                await leader_elected(client, stream)
    finally:
        await orchestrator.stop()
        await service_nc.close()
        await client.close()
