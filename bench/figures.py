"""Every figure of a bench run, as msgspec Structs: one per section, nested in `BenchResult`.

Sections build these and the report reads their attributes, so a renamed or forgotten figure is
an error where it is built (a required field not given) or read (no such attribute), never a
silently missing key. `bench/results/latest.json` is `BenchResult` encoded; decoding it back with
`decode_result` refuses a missing or unknown key.

A figure that could not be measured is `None`, and the Struct holding it says why in
`not_measured` (field name -> reason). Latencies without a sample are `None` with `samples: 0`;
`first_error` / `first_failure` are `None` when nothing failed.
"""

from __future__ import annotations

import msgspec


class Figures(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every figure Struct: all fields required, unknown keys refused on decoding."""


class Latency(Figures):
    """Nearest-rank percentiles and mean of one named latency, in milliseconds."""

    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    mean_ms: float | None
    samples: int


class LoadSummary(Figures):
    """What the closed-loop clients observed inside the measured window."""

    clients: int
    seconds: float
    completed: int
    errors: int
    throughput: float
    first_error: str | None


class Level(LoadSummary):
    """One client count of a closed-loop measurement, with CPU and RSS of the measured processes.

    Subclasses add one `Latency` field per latency the operation reports (`rtt`, `ack`, ...).
    """

    cpu_seconds: float
    cpu_seconds_per_1000: float | None
    rss_mib: float


class RttLevel(Level):
    """A request answered: the round trip."""

    rtt: Latency


class AckLevel(Level):
    """A chat message sent: its acknowledgement (send path alone)."""

    ack: Latency


class ChatLevel(Level):
    """A chat message sent: its acknowledgement and its final answer."""

    ack: Latency
    final: Latency


class SessionStartLevel(LoadSummary):
    """`session.start` callers (no process usage: the sessions are the point)."""

    start: Latency


class EchoLevels(Figures):
    """A floor measured at several client counts."""

    levels: list[RttLevel]


class ChatPath(Figures):
    """Send -> answer with the workers running, then send -> ack with them paused."""

    chat: list[ChatLevel]
    ack: list[AckLevel]
    ack_workers_paused: bool


class Floors(Figures):
    """Raw NATS request-reply, a plain WebSocket echo, and the durable floor of one chat."""

    nats_request_reply: EchoLevels
    ws_echo: EchoLevels
    durable: ChatPath


class Peer(Figures):
    """The send path served by the framework a user would pick instead."""

    framework: str
    ack: list[AckLevel]


class EdgeRoundTrip(Figures):
    """chat.message -> chat.response through the edge's WebSocket."""

    levels: list[ChatLevel]


class MeasuredProcesses(Figures):
    """Which processes the orchestrator rows' CPU and RSS are of."""

    measured: str
    agent: str


class OrchestratorFigures(Figures):
    """The orchestrator over NATS, through its edge, and its agent alone."""

    nats: ChatPath
    ws: EdgeRoundTrip | None
    direct_agent: list[RttLevel]
    processes: MeasuredProcesses
    not_measured: dict[str, str]


class IdleSockets(Figures):
    """Idle WebSockets held by one process and that process's RSS per socket."""

    target: int
    held: int
    failures: int
    first_failure: str | None
    connect_seconds: float
    connects_per_second: float | None
    rss_mib_before: float
    rss_mib_after: float
    rss_kib_per_connection: float | None


class EdgeIdleSockets(IdleSockets):
    """Idle sockets joined to sessions on an edge-only orchestrator process."""

    sessions_used: int
    process: str


class Propagation(Figures):
    """Agent config change -> acted on by a running instance."""

    flips: int
    missed: int
    p50_ms: float | None
    max_ms: float | None


class Sweep(Figures):
    """Send -> answer of one system from few to many clients."""

    system: str
    levels: list[ChatLevel]


class Scale(Figures):
    """Session start rate, idle sockets, config propagation and a client sweep.

    Without the orchestrator, the durable floor is swept and its fields are None (with reasons).
    """

    session_start: SessionStartLevel | None
    idle_ws: EdgeIdleSockets | None
    idle_ws_plain_echo: IdleSockets
    config_propagation: Propagation | None
    sweep: Sweep
    not_measured: dict[str, str]


class StreamLevel(Figures):
    """C clients each streaming answers at once; per-process figures keyed by process name."""

    clients: int
    turns: int
    errors: int
    first_error: str | None
    first_token_overhead: Latency
    tokens_per_second: float
    offered_tokens_per_second: float
    tokens_delivered: int
    lost: int
    duplicated: int
    out_of_order: int
    missing_stamp: int
    cpu_us_per_token: dict[str, float | None]
    peak_rss_mib: dict[str, float]
    within_target: bool


class StreamSweep(Figures):
    """One system's levels until it missed the target; `capacity` is the last level met."""

    system: str
    own_process: str  # the key of this system's own process in the per-process figures
    levels: list[StreamLevel]
    capacity: int


class Streams(Figures):
    """The relay floor and the orchestrator streaming answers at model pace."""

    tokens_per_answer: int
    tokens_per_second_per_answer: float
    overhead_p99_target_ms: float
    relay_floor: StreamSweep
    orchestrator: StreamSweep | None
    not_measured: dict[str, str]


class InstanceFailover(Figures):
    """One of two orchestrator instances killed (SIGKILL) while it ran chats, at the default
    ORCH_TASK_LEASE: seconds from the kill until every chat acknowledged before it had its final
    answer, and the acknowledged chats without exactly one final answer (`lost`)."""

    kill_to_last_answer_seconds: float | None
    acknowledged: int
    lost: int
    not_measured: dict[str, str]


class RunBudget(Figures):
    """Warm-up and measured seconds of one closed-loop level."""

    warmup: float
    duration: float


class Host(Figures):
    """The machine the run measured."""

    python: str
    platform: str
    cpus: int
    nofile: int


class RunInfo(Figures):
    """When, how long and with which plan the run measured."""

    at: str
    seconds: float
    quick: bool
    smoke: bool
    sections: list[str]
    budget: RunBudget
    chunks_per_answer: int
    host: Host


class Ratios(Figures):
    """Every comparison and target figure, read at `clients` clients."""

    clients: int
    orchestrator_to_durable_floor_throughput_ratio: float | None
    orchestrator_to_durable_floor_ack_throughput_ratio: float | None
    orchestrator_ws_to_plain_ws_echo_throughput_ratio: float | None
    orchestrator_to_faststream_peer_ack_throughput_ratio: float | None
    durable_floor_to_faststream_peer_ack_throughput_ratio: float | None
    added_p50_ms_over_direct_agent: float | None
    durable_floor_added_p50_ms_over_direct_agent: float | None
    idle_ws_rss_kib_per_connection: float | None
    idle_ws_rss_to_plain_ws_echo_ratio: float | None
    relay_floor_stream_capacity: int | None
    orchestrator_stream_capacity: int | None
    stream_capacity_to_relay_floor_ratio: float | None
    orchestrator_cpu_us_per_token: float | None
    orchestrator_cpu_us_per_token_at_clients: int | None
    failover_kill_to_last_answer_seconds: float | None
    not_measured: dict[str, str]


class Sections(Figures):
    """A field per section (None if it did not run, with the reason in `not_measured`)."""

    floors: Floors | None
    peer: Peer | None
    orchestrator: OrchestratorFigures | None
    scale: Scale | None
    streams: Streams | None
    failover: InstanceFailover | None
    not_measured: dict[str, str]


SECTION_FIELDS = tuple(name for name in Sections.__struct_fields__ if name != "not_measured")


class BenchResult(Sections):
    """One `python -m bench` run: its sections, how it ran, and the ratios read from them."""

    run: RunInfo
    ratios: Ratios


encode_result = msgspec.json.Encoder().encode
decode_result = msgspec.json.Decoder(BenchResult).decode
