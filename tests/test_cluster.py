"""A three-node JetStream cluster: with everything at three replicas, losing a node loses nothing.

Two orchestrator instances sit on different nodes, chats go through a third connection, and the
node leading the work queue is killed with -9 under load, then restarted and caught up.
"""

from __future__ import annotations

import asyncio

import pytest
from cluster import NatsCluster
from conftest import wait_until
from support.calls import connect_client, seed_demo_agent, wait_for_service
from support.chat_load import (
    ChatLoad,
    assert_answered_exactly_once,
    open_sessions,
    wait_every_stored_task_final,
)
from support.processes import OrchestratorProcess

from orchestrator.service.agent.reference_agent import ReferenceAgent
from orchestrator.service.runtime.settings import AgentSettings
from orchestrator.subjects import Subjects

STREAMS = ("KV_sessions", "KV_tasks", "KV_agent_configs", "SESSION_EVENTS", "CHAT_WORK")
FAULT_CODES = {"unavailable", "timeout", "rate_limited"}
# A stream whose leader died has none for up to ~10 s (Raft election): execution retries must
# outlast that, or a task whose chunks could not be stored fails (visibly) instead of completing.
PATIENT = dict(
    ORCH_EXECUTION_MAX_RETRIES="8", ORCH_EXECUTION_BACKOFF_INITIAL="0.5",
    ORCH_EXECUTION_BACKOFF_MAX="3", ORCH_TASK_MAX_DELIVERIES="6",
)  # fmt: skip


@pytest.fixture
def cluster(tmp_path):
    nodes = NatsCluster(tmp_path / "cluster").start()
    try:
        yield nodes
    finally:
        nodes.kill()


@pytest.fixture
def orchestrators(tmp_path):
    started: list[OrchestratorProcess] = []

    def start(url: str, name: str) -> OrchestratorProcess:
        proc = OrchestratorProcess(url, tmp_path / f"{name}.log", **PATIENT,
                                   ORCH_REPLICAS="3", ORCH_INSTANCE_ID=name).start()  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


async def replicas_current(js) -> bool:
    """Every stream has all its replicas back and caught up."""
    for stream in STREAMS:
        info = await js.stream_info(stream)
        replicas = info.cluster.replicas or []
        if len(replicas) != 2 or not all(r.current and not r.offline for r in replicas):
            return False
    return True


async def test_killing_a_node_of_an_r3_cluster_loses_no_acknowledged_chat(cluster, orchestrators):
    await cluster.wait_ready()
    n0, n1, n2 = cluster.urls
    orchestrators(n0, "a")
    orchestrators(n1, "b")
    client = await connect_client(n2, n0, n1)
    agent_nc = await connect_client(n0, n2, n1)
    agent = ReferenceAgent(agent_nc, Subjects(), AgentSettings(chunk_delay=0.05))
    await agent.start()
    try:
        await wait_for_service(client, count=2, timeout=40)
        await seed_demo_agent(client)
        js = client.jetstream()
        for stream in STREAMS:
            assert (await js.stream_info(stream)).config.num_replicas == 3, stream

        sessions = await open_sessions(client, [f"u{i}" for i in range(12)])
        chats = ChatLoad(client, sessions, per_user=6, pause=0.2)
        running = asyncio.create_task(chats.run(timeout=3))
        await wait_until(lambda: len(chats.acked) >= 15, timeout=30, message="chats before")

        # The node leading the work queue: its loss forces an election under load.
        leader = (await js.stream_info("CHAT_WORK")).cluster.leader
        victim = cluster.node_named(leader)
        victim.kill()
        acked_at_kill = len(chats.acked)
        await wait_until(lambda: len(chats.acked) >= acked_at_kill + 15, timeout=30,
                         message="chats acknowledged without the node")  # fmt: skip
        await asyncio.to_thread(victim.start)
        await asyncio.wait_for(running, timeout=60)

        assert set(chats.refused) <= FAULT_CODES, chats.refused
        # Bounded by the retry budget above (attempts, backoff, redeliveries), not by timing.
        await assert_answered_exactly_once(client, chats.acked, timeout=60)
        await wait_every_stored_task_final(client, timeout=60)
        await wait_until(lambda: replicas_current(js), timeout=30, interval=0.5,
                         message="the restarted node to catch up")  # fmt: skip
        await wait_for_service(client, count=2, timeout=20)
    finally:
        await agent.stop(grace=1.0)
        await agent_nc.close()
        await client.close()
