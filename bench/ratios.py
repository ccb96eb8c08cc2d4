"""The ratios and target figures of a run, read from its Structs at the plan's client count.

Each input is read with the reason it could be missing, so every None ratio names its cause in
`Ratios.not_measured`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .driver import by_clients
from .figures import Latency, Level, Ratios, Sections, StreamLevel, StreamSweep


@dataclass(frozen=True)
class Read:
    """One input figure, or None and why."""

    value: float | None
    why: str = ""


def _missing(why: str) -> Read:
    return Read(None, why)


def _of(value: float | None, why: str) -> Read:
    return Read(value, "" if value is not None else why)


class Reader:
    """Reads the inputs of the ratios from one result at `clients` clients."""

    def __init__(self, result: Sections, clients: int) -> None:
        self.result = result
        self.clients = clients

    def section(self, name: str) -> str:
        return f"{name} section not measured: {self.result.not_measured.get(name, 'not run')}"

    def row(self, rows: Sequence[Level], what: str) -> Level | Read:
        row = by_clients(list(rows), self.clients)
        return row if row is not None else _missing(f"{what}: no level at {self.clients} clients")

    def throughput(self, rows: Sequence[Level] | Read, what: str) -> Read:
        if isinstance(rows, Read):
            return rows
        row = self.row(rows, what)
        return row if isinstance(row, Read) else Read(row.throughput)

    def p50(self, rows: Sequence[Level] | Read, latency: str, what: str) -> Read:
        if isinstance(rows, Read):
            return rows
        row = self.row(rows, what)
        if isinstance(row, Read):
            return row
        lat: Latency = getattr(row, latency)
        return _of(lat.p50_ms, f"{what}: no {latency} sample at {self.clients} clients")

    def floors(self) -> dict[str, Sequence[Level] | Read]:
        floors = self.result.floors
        if floors is None:
            return dict.fromkeys(("chat", "ack", "ws_echo"), _missing(self.section("floors")))
        return {"chat": floors.durable.chat, "ack": floors.durable.ack,
                "ws_echo": floors.ws_echo.levels}  # fmt: skip

    def orchestrator(self) -> dict[str, Sequence[Level] | Read]:
        orch = self.result.orchestrator
        if orch is None:
            missing = _missing(self.section("orchestrator"))
            return dict.fromkeys(("chat", "ack", "ws", "direct"), missing)
        ws = (
            orch.ws.levels
            if orch.ws is not None
            else _missing(f"edge round trip not measured: {orch.not_measured.get('ws')}")
        )
        return {"chat": orch.nats.chat, "ack": orch.nats.ack, "ws": ws,
                "direct": orch.direct_agent}  # fmt: skip

    def peer_ack(self) -> Sequence[Level] | Read:
        peer = self.result.peer
        return peer.ack if peer is not None else _missing(self.section("peer"))

    def idle(self) -> tuple[Read, Read]:
        scale = self.result.scale
        if scale is None:
            missing = _missing(self.section("scale"))
            return missing, missing
        echo = scale.idle_ws_plain_echo
        echo_read = _of(echo.rss_kib_per_connection, "the plain echo held no idle socket")
        if scale.idle_ws is None:
            return _missing(f"idle_ws: {scale.not_measured.get('idle_ws')}"), echo_read
        edge = _of(scale.idle_ws.rss_kib_per_connection, "the edge held no idle socket")
        return edge, echo_read


def _ratio(a: Read, b: Read) -> Read:
    if a.value is None:
        return a
    if b.value is None:
        return b
    if not b.value:
        return _missing("the divisor is 0")
    return Read(round(a.value / b.value, 3))


def _difference(a: Read, b: Read) -> Read:
    if a.value is None:
        return a
    if b.value is None:
        return b
    return Read(round(a.value - b.value, 3))


def capacity_row(sweep: StreamSweep) -> StreamLevel | None:
    """The row at a system's capacity, or its first level if it met the target at none."""
    if not sweep.levels:
        return None
    return next((r for r in sweep.levels if r.clients == sweep.capacity), sweep.levels[0])


def stream_reads(result: Sections, reader: Reader) -> dict[str, Read]:
    """Capacities of the streams section, their ratio, and the orchestrator's CPU per token
    (of `orchestrator run`, edge and service, at its capacity)."""
    streams = result.streams
    if streams is None:
        missing = _missing(reader.section("streams"))
        relay = orch = cpu = at = missing
    else:
        relay = Read(streams.relay_floor.capacity)
        if streams.orchestrator is None:
            orch = cpu = at = _missing(f"orchestrator: {streams.not_measured.get('orchestrator')}")
        else:
            orch = Read(streams.orchestrator.capacity)
            row = capacity_row(streams.orchestrator)
            if row is None:
                cpu = at = _missing("the orchestrator's stream sweep has no level")
            else:
                own = row.cpu_us_per_token[streams.orchestrator.own_process]
                cpu = _of(own, f"no token delivered at {row.clients} clients")
                at = Read(row.clients)
    return {
        "relay_floor_stream_capacity": relay,
        "orchestrator_stream_capacity": orch,
        "stream_capacity_to_relay_floor_ratio": _ratio(orch, relay),
        "orchestrator_cpu_us_per_token": cpu,
        "orchestrator_cpu_us_per_token_at_clients": at,
    }


def failover_read(result: Sections, reader: Reader) -> Read:
    """Seconds from an instance's kill to the last answer of the chats acknowledged before it."""
    failover = result.failover
    if failover is None:
        return _missing(reader.section("failover"))
    why = failover.not_measured.get("kill_to_last_answer_seconds", "")
    return _of(failover.kill_to_last_answer_seconds, why)


def ratios(result: Sections, clients: int) -> Ratios:
    """Every comparison, read at `clients` clients; None (with the reason) where a side is
    missing."""
    reader = Reader(result, clients)
    floors, orch = reader.floors(), reader.orchestrator()
    orch_chat = reader.throughput(orch["chat"], "orchestrator chat")
    orch_ack = reader.throughput(orch["ack"], "orchestrator ack")
    floor_chat = reader.throughput(floors["chat"], "durable floor chat")
    floor_ack = reader.throughput(floors["ack"], "durable floor ack")
    peer_ack = reader.throughput(reader.peer_ack(), "FastStream peer ack")
    agent_p50 = reader.p50(orch["direct"], "rtt", "agent direct")
    idle_edge, idle_echo = reader.idle()
    reads = {
        "orchestrator_to_durable_floor_throughput_ratio": _ratio(orch_chat, floor_chat),
        "orchestrator_to_durable_floor_ack_throughput_ratio": _ratio(orch_ack, floor_ack),
        "orchestrator_ws_to_plain_ws_echo_throughput_ratio": _ratio(
            reader.throughput(orch["ws"], "orchestrator ws"),
            reader.throughput(floors["ws_echo"], "plain ws echo"),
        ),
        "orchestrator_to_faststream_peer_ack_throughput_ratio": _ratio(orch_ack, peer_ack),
        "durable_floor_to_faststream_peer_ack_throughput_ratio": _ratio(floor_ack, peer_ack),
        "added_p50_ms_over_direct_agent": _difference(
            reader.p50(orch["chat"], "final", "orchestrator chat"), agent_p50
        ),
        "durable_floor_added_p50_ms_over_direct_agent": _difference(
            reader.p50(floors["chat"], "final", "durable floor chat"), agent_p50
        ),
        "idle_ws_rss_kib_per_connection": idle_edge,
        "idle_ws_rss_to_plain_ws_echo_ratio": _ratio(idle_edge, idle_echo),
        **stream_reads(result, reader),
        "failover_kill_to_last_answer_seconds": failover_read(result, reader),
    }
    return Ratios(
        clients=clients,
        **{name: read.value for name, read in reads.items()},
        not_measured={name: read.why for name, read in reads.items() if read.value is None},
    )
