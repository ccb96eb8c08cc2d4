"""A three-node JetStream cluster: with everything at three replicas, losing a node loses nothing.

Two orchestrator instances sit on two nodes, chats go through a connection to the third, and the
execution agent (a process of its own) is connected to one node only. That node is made the
leader of every stream and durable consumer, then killed with -9 under load: every Raft group
elects a new leader, the agent reconnects to a node it learned from the cluster, and one
instance loses its connection. Every acknowledged chat must end with exactly one answer; the
time from the kill to the last answer of the chats acknowledged before it is the failover time
(printed, and kept in the test report as `failover_seconds`: `pytest --junitxml` writes it). It is
measured, not asserted: a Raft election alone takes 4-9 s (nats-server's election timeout).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from cluster import NatsCluster, move_leaders
from conftest import wait_until
from support.calls import connect_client, seed_demo_agent, wait_for_service
from support.chat_load import (
    ChatLoad,
    assert_answered_exactly_once,
    open_sessions,
    wait_all_final,
    wait_every_stored_task_final,
)
from support.processes import OrchestratorProcess

from orchestrator.service.runtime.settings import OrchestratorSettings

FAULT_CODES = {"unavailable", "timeout", "rate_limited"}
# The failover is measured with the production defaults of everything that paces it (the harness
# shortens some for single-server tests), the execution retry budget included: storing an
# attempt's start and parts rides out the election instead of spending retries.
DEFAULTS = {
    f"ORCH_{name.upper()}": str(OrchestratorSettings.model_fields[name].default)
    for name in ("execution_timeout", "execution_backoff_initial", "task_lease", "shutdown_grace")
}
AGENT = dict(ORCH_AGENT_CHUNK_DELAY="0.05")


@pytest.fixture
def cluster(tmp_path):
    nodes = NatsCluster(tmp_path / "cluster").start()
    try:
        yield nodes
    finally:
        nodes.kill()


@pytest.fixture
def processes(tmp_path):
    """Start `orchestrator <role>` processes on one NATS URL list; all killed after the test."""
    started: list[OrchestratorProcess] = []

    def start(url: str, name: str, *command: str, **env: str) -> OrchestratorProcess:
        env = {**DEFAULTS, "ORCH_REPLICAS": "3", "ORCH_INSTANCE_ID": name, **env}
        proc = OrchestratorProcess(url, tmp_path / f"{name}.log", **env).start(*command)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


async def replicas_current(js, streams: list[str]) -> bool:
    """Every stream has all its replicas back and caught up."""
    for stream in streams:
        info = await js.stream_info(stream)
        replicas = info.cluster.replicas or []
        if len(replicas) != 2 or not all(r.current and not r.offline for r in replicas):
            return False
    return True


def failover(killed_at: datetime, final: dict[str, dict]) -> tuple[float, str]:
    """From the kill to the last final state stored among `final` (task views), and that task."""
    last = max(final.values(), key=lambda view: datetime.fromisoformat(view["updated_at"]))
    seconds = (datetime.fromisoformat(last["updated_at"]) - killed_at).total_seconds()
    return max(0.0, seconds), last["task_id"]


async def test_killing_the_node_that_leads_everything_and_holds_the_agent_loses_no_chat(
    cluster, processes, record_property
):  # fmt: skip
    await cluster.wait_ready()
    n0, n1, n2 = cluster.urls
    victim_name = "n1"
    victim = cluster.node_named(victim_name)
    client = await connect_client(n2, n0)
    try:
        # Both at once on a fresh cluster: a consumer lookup that times out while the consumer's
        # Raft group forms is tried again (ORCH_PULL_BIND_*), start-up does not fail.
        processes(n0, "a")
        processes(n1, "b")
        # Its only URL is the victim's: after the kill it reconnects to a node the cluster named.
        processes(n1, "agent", "agent", **AGENT)
        await wait_for_service(client, count=2, timeout=40)
        await wait_for_service(client, name="execution-demo", timeout=40)
        await seed_demo_agent(client)
        js = client.jetstream()
        groups = await move_leaders(client, victim_name)
        streams = [group for group in groups if "/" not in group]
        for stream in streams:
            assert (await js.stream_info(stream)).config.num_replicas == 3, stream
        assert {"KV_tasks", "SESSION_EVENTS", "CHAT_WORK", "CHAT_WORK/chat-workers"} <= set(groups)

        sessions = await open_sessions(client, [f"u{i}" for i in range(12)])
        chats = ChatLoad(client, sessions, per_user=8, pause=0.2)
        running = asyncio.create_task(chats.run(timeout=3))
        await wait_until(lambda: len(chats.acked) >= 20, timeout=60, message="chats before")

        killed_at = datetime.now(UTC)
        victim.kill()
        in_flight = list(chats.acked)
        # Bounded by the retry budgets (attempts, backoff, lease, re-drive), not by timing.
        final = await wait_all_final(client, in_flight, timeout=90)
        seconds, last = failover(killed_at, final)
        record_property("failover_seconds", round(seconds, 2))
        record_property("chats_acknowledged_before_kill", len(in_flight))
        print(f"\nfailover: last answer of {len(in_flight)} chats acknowledged before the kill "
              f"{seconds:.2f}s after it (task {last})")  # fmt: skip

        await wait_until(lambda: len(chats.acked) >= len(in_flight) + 15, timeout=60,
                         message="chats acknowledged without the node")  # fmt: skip
        await asyncio.to_thread(victim.start)
        await asyncio.wait_for(running, timeout=120)

        assert set(chats.refused) <= FAULT_CODES, chats.refused
        await assert_answered_exactly_once(client, chats.acked, timeout=90)
        await wait_every_stored_task_final(client, timeout=60)
        await wait_until(lambda: replicas_current(js, streams), timeout=60, interval=0.5,
                         message="the restarted node to catch up")  # fmt: skip
        await wait_for_service(client, count=2, timeout=30)
    finally:
        await client.close()
