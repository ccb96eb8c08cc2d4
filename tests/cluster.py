"""A three-node nats-server cluster with JetStream on loopback, for tests that kill a node."""

from __future__ import annotations

import json
from pathlib import Path

import nats
from conftest import wait_until
from nats.js.api import StreamConfig
from nats.js.errors import APIError, ServiceUnavailableError

from orchestrator.service.runtime.nats_server import NatsServer, free_port

HOST = "127.0.0.1"
_PROBE = StreamConfig(name="CLUSTER_PROBE", subjects=["cluster.probe"], num_replicas=3)


def node_config(name: str, cluster: str, store: Path, route_port: int, routes: list[int]) -> str:
    """nats.conf of one node; the client port comes from the command line."""
    others = ", ".join(f'"nats-route://{HOST}:{port}"' for port in routes)
    return (
        f"server_name: {name}\n"
        f'jetstream {{ store_dir: "{store}" }}\n'
        f"cluster {{\n"
        f"  name: {cluster}\n"
        f'  listen: "{HOST}:{route_port}"\n'
        f"  routes: [{others}]\n"
        f"}}\n"
    )


class NatsCluster:
    """`size` routed nats-servers, each with its own store, config file and free ports."""

    def __init__(self, root: Path, size: int = 3, name: str = "orchestrator-test") -> None:
        self.root = Path(root)
        route_ports = [free_port(HOST) for _ in range(size)]
        self.nodes: list[NatsServer] = []
        for i in range(size):
            node_dir = self.root / f"n{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            config = node_dir / "nats.conf"
            routes = [p for j, p in enumerate(route_ports) if j != i]
            config.write_text(
                node_config(f"n{i}", name, node_dir / "jetstream", route_ports[i], routes)
            )
            self.nodes.append(NatsServer(node_dir, HOST, config_file=config))

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node_named(self, server_name: str) -> NatsServer:
        """The node whose `server_name` is `n<i>`."""
        return self.nodes[int(server_name.removeprefix("n"))]

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        return self

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until JetStream has a meta leader and places a three-replica stream."""
        nc = await nats.connect(self.urls, connect_timeout=2, max_reconnect_attempts=-1)
        js = nc.jetstream(timeout=2)
        last: list[Exception] = []

        async def placed() -> bool:
            try:
                await js.account_info()
                await js.add_stream(_PROBE)
                await js.delete_stream(_PROBE.name)
            except (nats.errors.TimeoutError, ServiceUnavailableError, APIError) as exc:
                last[:] = [exc]
                return False
            return True

        try:
            await wait_until(placed, timeout, 0.25, lambda: f"JetStream cluster ready: {last}")
        finally:
            await nc.close()


async def replicated_groups(js) -> list[tuple[str, str | None]]:
    """Every stream on the cluster and its durable consumers, as (stream, consumer or None).

    Read from the server, not from a list kept here: whatever the orchestrator's start-up
    created (buckets, streams, their durable consumers) is included.
    """
    groups: list[tuple[str, str | None]] = []
    for stream in await js.streams_info():
        name = stream.config.name
        groups.append((name, None))
        for consumer in await js.consumers_info(name):
            if consumer.config.durable_name and consumer.cluster and consumer.cluster.replicas:
                groups.append((name, consumer.name))  # R1 ephemeral watchers have no peers
    return groups


async def leader_of(js, stream: str, consumer: str | None) -> str | None:
    info = await (js.consumer_info(stream, consumer) if consumer else js.stream_info(stream))
    return info.cluster.leader if info.cluster else None


async def move_leaders(nc, server_name: str, timeout: float = 60.0) -> list[str]:
    """Make `server_name` the leader of every stream and durable consumer; returns their names.

    JetStream's leader step-down with a preferred placement (nats-server 2.11+): the current
    leader answers, and hands its Raft group over to that peer. It refuses while the peer is
    not caught up, and the group may have no leader for a moment: the request is repeated until
    every group reports the node as its leader.
    """
    js = nc.jetstream(timeout=5)
    groups = await replicated_groups(js)
    body = json.dumps({"placement": {"preferred": server_name}}).encode()
    pending = list(groups)

    async def all_led() -> bool:
        left = []
        for stream, consumer in pending:
            try:
                if await leader_of(js, stream, consumer) == server_name:
                    continue
                subject = (
                    f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}"
                    if consumer
                    else f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
                )
                await nc.request(subject, body, timeout=5)
            except (nats.errors.Error, APIError):
                pass  # no leader right now: asked again on the next look
            left.append((stream, consumer))
        pending[:] = left
        return not left

    await wait_until(all_led, timeout, 0.5, lambda: f"{server_name} to lead {pending}")
    return [f"{stream}/{consumer}" if consumer else stream for stream, consumer in groups]
