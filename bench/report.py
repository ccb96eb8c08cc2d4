"""The markdown tables of a run (read from its Structs) and an optional chart."""

from __future__ import annotations

from pathlib import Path

from .figures import BenchResult, Level, Ratios, Streams

TARGETS = {
    "orchestrator_to_durable_floor_throughput_ratio": (">=", 0.60),
    "orchestrator_ws_to_plain_ws_echo_throughput_ratio": (">=", 0.50),
    "added_p50_ms_over_direct_agent": ("<=", 1.0),
    "idle_ws_rss_kib_per_connection": ("<=", 20.0),
    "orchestrator_to_faststream_peer_ack_throughput_ratio": (">=", 2.0),
    "stream_capacity_to_relay_floor_ratio": (">=", 0.5),
    "orchestrator_cpu_us_per_token": ("<=", 10.0),
    "orchestrator_stream_capacity": (">=", 1000),
}


def _verdict(name: str, ratios: Ratios) -> str:
    value = getattr(ratios, name)
    if value is None:
        return f"not measured ({ratios.not_measured[name]})"
    op, target = TARGETS[name]
    ok = value >= target if op == ">=" else value <= target
    return "met" if ok else "missed"


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.3g}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return f"{value}{unit}"


def _measurements(result: BenchResult) -> list[tuple[str, list | None, str]]:
    """(label, rows by client count or None, latency field) of every closed-loop measurement."""
    floors, peer, orch = result.floors, result.peer, result.orchestrator
    return [
        ("raw NATS request-reply (echo)", floors and floors.nats_request_reply.levels, "rtt"),
        ("plain aiohttp WebSocket echo", floors and floors.ws_echo.levels, "rtt"),
        ("durable floor: send -> ack", floors and floors.durable.ack, "ack"),
        ("durable floor: send -> answer", floors and floors.durable.chat, "final"),
        ("FastStream peer: send -> ack", peer and peer.ack, "ack"),
        ("orchestrator NATS: send -> ack", orch and orch.nats.ack, "ack"),
        ("orchestrator NATS: send -> answer", orch and orch.nats.chat, "final"),
        ("orchestrator WebSocket: send -> answer", orch and orch.ws and orch.ws.levels, "final"),
        ("agent direct request", orch and orch.direct_agent, "rtt"),
    ]


def _level_line(label: str, row: Level, latency: str) -> str:
    lat = getattr(row, latency)  # a field every row of this measurement has (AttributeError if not)
    return (
        f"| {label} | {row.clients} | {_fmt(row.throughput)} | {_fmt(lat.p50_ms)} | "
        f"{_fmt(lat.p99_ms)} | {_fmt(lat.p999_ms)} | {_fmt(row.cpu_seconds_per_1000)} | "
        f"{_fmt(row.rss_mib)} |"
    )


def markdown(result: BenchResult) -> str:
    """The README-ready tables: throughput/latency per client count, then the targets."""
    lines = [
        "| measurement | clients | msgs/s | p50 ms | p99 ms | p99.9 ms | CPU s / 1k msgs "
        "| RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rows, latency in _measurements(result):
        lines += [_level_line(label, row, latency) for row in rows or []]
    ratios = result.ratios
    lines += [
        "",
        f"| target (at {ratios.clients} clients) | wanted | measured | verdict |",
        "|---|---|---:|---|",
    ]
    for name, (op, target) in TARGETS.items():
        lines.append(
            f"| `{name}` | {op} {target} | {_fmt(getattr(ratios, name))} | "
            f"{_verdict(name, ratios)} |"
        )
    lines += scale_table(result) + failover_table(result)
    if result.streams is not None:
        lines += stream_table(result.streams)
    for section, reason in result.not_measured.items():
        if section in result.run.sections:
            lines += ["", f"*{section} section skipped: {reason}*"]
    return "\n".join(lines) + "\n"


def scale_table(result: BenchResult) -> list[str]:
    """Idle sockets, session starts and config propagation; empty if scale did not run."""
    scale = result.scale
    if scale is None:
        return []
    idle, starts, echo = scale.idle_ws, scale.session_start, scale.idle_ws_plain_echo
    spread = scale.config_propagation
    return [
        "",
        "| scale | value |",
        "|---|---:|",
        f"| idle WebSockets held by one edge | {_fmt(idle and idle.held)} |",
        f"| edge RSS per idle WebSocket (KiB) | {_fmt(idle and idle.rss_kib_per_connection)} |",
        f"| idle sockets held by the plain echo | {_fmt(echo.held)} |",
        f"| plain echo RSS per idle WebSocket (KiB) | {_fmt(echo.rss_kib_per_connection)} |",
        f"| sessions started per second | {_fmt(starts and starts.throughput)} |",
        "| agent config change acted on by a running instance, p50 / max ms "
        f"| {_fmt(spread and spread.p50_ms)} / {_fmt(spread and spread.max_ms)} |",
    ]


def failover_table(result: BenchResult) -> list[str]:
    """One of two instances killed while running chats; empty if the section did not run."""
    failover = result.failover
    if failover is None:
        return []
    return [
        "",
        "| failover (one of two instances killed, default ORCH_TASK_LEASE) | value |",
        "|---|---:|",
        "| instance kill -> last final answer (s) "
        f"| {_fmt(failover.kill_to_last_answer_seconds)} |",
        "| chats acknowledged before the kill / lost "
        f"| {failover.acknowledged} / {failover.lost} |",
    ]


def stream_table(streams: Streams) -> list[str]:
    """One row per (system, level) of the streams section."""
    sweeps = [s for s in (streams.relay_floor, streams.orchestrator) if s is not None]
    lines = [
        "",
        f"| streams ({streams.tokens_per_answer} tokens at "
        f"{streams.tokens_per_second_per_answer:g}/s) | clients | first-token overhead "
        "p50 / p99 ms | tokens/s | CPU us/token per process | peak RSS MiB | "
        "lost / dup / out of order | within target |",
        "|---|---:|---:|---:|---|---|---:|---|",
    ]
    for sweep in sweeps:
        for row in sweep.levels:
            lat = row.first_token_overhead
            cpu = ", ".join(f"{k} {_fmt(v)}" for k, v in row.cpu_us_per_token.items())
            rss = ", ".join(f"{k} {_fmt(v)}" for k, v in row.peak_rss_mib.items())
            lines.append(
                f"| {sweep.system} | {row.clients} | {_fmt(lat.p50_ms)} / "
                f"{_fmt(lat.p99_ms)} | {_fmt(row.tokens_per_second)} | {cpu} | {rss} | "
                f"{row.lost} / {row.duplicated} / {row.out_of_order} | "
                f"{'yes' if row.within_target else 'no'} |"
            )
        lines.append(f"| **{sweep.system} capacity** | **{sweep.capacity}** | | | | | | |")
    return lines


def plot(result: BenchResult, path: Path) -> Path | None:
    """Throughput and p99 against clients, if matplotlib happens to be installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if result.scale is None or not result.scale.sweep.levels:
        return None
    sweep = result.scale.sweep
    clients = [row.clients for row in sweep.levels]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(clients, [row.throughput for row in sweep.levels], marker="o", label="msgs/s")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent clients")
    left.set_ylabel("messages per second")
    right = left.twinx()
    right.plot(clients, [row.final.p99_ms for row in sweep.levels], color="tab:red", marker="x")
    right.set_ylabel("p99 send -> answer (ms)")
    left.set_title(f"{sweep.system}: chat throughput and p99")
    fig.tight_layout()
    fig.savefig(path)
    return path
