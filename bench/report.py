"""Ratios against the targets, the markdown table, and an optional chart."""

from __future__ import annotations

from pathlib import Path

from .driver import by_clients

AT = 64  # the client count at which ratios and targets are read

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


def _get(results: dict, *path):
    node = results
    for key in path:
        if node is None:
            return None
        node = by_clients(node, key) if isinstance(node, list) else node.get(key)
    return node


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(results: dict) -> dict:
    """Every comparison, read at 64 clients; None where a side was not measured."""
    orch_chat = _get(results, "orchestrator", "nats", "chat", AT, "throughput")
    orch_ack = _get(results, "orchestrator", "nats", "ack", AT, "throughput")
    orch_ws = _get(results, "orchestrator", "ws", "levels", AT, "throughput")
    floor_chat = _get(results, "floors", "durable", "chat", AT, "throughput")
    floor_ack = _get(results, "floors", "durable", "ack", AT, "throughput")
    echo_ws = _get(results, "floors", "ws_echo", "levels", AT, "throughput")
    peer_ack = _get(results, "peer", "ack", AT, "throughput")
    orch_p50 = _get(results, "orchestrator", "nats", "chat", AT, "final", "p50_ms")
    floor_p50 = _get(results, "floors", "durable", "chat", AT, "final", "p50_ms")
    agent_p50 = _get(results, "orchestrator", "direct_agent", AT, "rtt", "p50_ms")
    idle_edge = _get(results, "scale", "idle_ws", "rss_kib_per_connection")
    idle_echo = _get(results, "scale", "idle_ws_plain_echo", "rss_kib_per_connection")
    return {
        "clients": AT,
        "orchestrator_to_durable_floor_throughput_ratio": _ratio(orch_chat, floor_chat),
        "orchestrator_to_durable_floor_ack_throughput_ratio": _ratio(orch_ack, floor_ack),
        "orchestrator_ws_to_plain_ws_echo_throughput_ratio": _ratio(orch_ws, echo_ws),
        "orchestrator_to_faststream_peer_ack_throughput_ratio": _ratio(orch_ack, peer_ack),
        "durable_floor_to_faststream_peer_ack_throughput_ratio": _ratio(floor_ack, peer_ack),
        "added_p50_ms_over_direct_agent": (
            round(orch_p50 - agent_p50, 3) if orch_p50 is not None and agent_p50 else None
        ),
        "durable_floor_added_p50_ms_over_direct_agent": (
            round(floor_p50 - agent_p50, 3) if floor_p50 is not None and agent_p50 else None
        ),
        "idle_ws_rss_kib_per_connection": idle_edge,
        "idle_ws_rss_to_plain_ws_echo_ratio": _ratio(idle_edge, idle_echo),
        **stream_figures(results),
    }


def _capacity_row(sweep: dict | None) -> dict | None:
    """The row at a system's capacity, or its first level if it met the target at none."""
    if not sweep or not sweep.get("levels"):
        return None
    return by_clients(sweep["levels"], sweep["capacity"]) or sweep["levels"][0]


def stream_figures(results: dict) -> dict:
    """Capacities of the streams section, their ratio, and the orchestrator's CPU per token
    (of `orchestrator run`, edge and service, at its capacity)."""
    relay = _get(results, "streams", "relay_floor")
    orch = _get(results, "streams", "orchestrator")
    row = _capacity_row(orch)
    return {
        "relay_floor_stream_capacity": relay and relay["capacity"],
        "orchestrator_stream_capacity": orch and orch["capacity"],
        "stream_capacity_to_relay_floor_ratio": _ratio(
            orch and orch["capacity"], relay and relay["capacity"]
        ),
        "orchestrator_cpu_us_per_token": row and row["cpu_us_per_token"].get("orchestrator"),
        "orchestrator_cpu_us_per_token_at_clients": row and row["clients"],
    }


def _verdict(name: str, value) -> str:
    if value is None:
        return "not measured"
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


_MEASUREMENTS = (
    ("raw NATS request-reply (echo)", ("floors", "nats_request_reply", "levels"), "rtt"),
    ("plain aiohttp WebSocket echo", ("floors", "ws_echo", "levels"), "rtt"),
    ("durable floor: send -> ack", ("floors", "durable", "ack"), "ack"),
    ("durable floor: send -> answer", ("floors", "durable", "chat"), "final"),
    ("FastStream peer: send -> ack", ("peer", "ack"), "ack"),
    ("orchestrator NATS: send -> ack", ("orchestrator", "nats", "ack"), "ack"),
    ("orchestrator NATS: send -> answer", ("orchestrator", "nats", "chat"), "final"),
    ("orchestrator WebSocket: send -> answer", ("orchestrator", "ws", "levels"), "final"),
    ("agent direct request", ("orchestrator", "direct_agent"), "rtt"),
)


def _rows(results: dict) -> list[tuple[str, list[dict] | None, str]]:
    """(label, rows by client count, latency name) of every closed-loop measurement."""
    return [(label, _get(results, *path), name) for label, path, name in _MEASUREMENTS]


def markdown(results: dict) -> str:
    """The README-ready tables: throughput/latency per client count, then the targets."""
    lines = [
        "| measurement | clients | msgs/s | p50 ms | p99 ms | p99.9 ms | CPU s / 1k msgs "
        "| RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rows, name in _rows(results):
        for row in rows or []:
            lat = row.get(name) or {}
            lines.append(
                f"| {label} | {row['clients']} | {_fmt(row['throughput'])} | "
                f"{_fmt(lat.get('p50_ms'))} | {_fmt(lat.get('p99_ms'))} | "
                f"{_fmt(lat.get('p999_ms'))} | {_fmt(row.get('cpu_seconds_per_1000'))} | "
                f"{_fmt(row.get('rss_mib'))} |"
            )
    ratio = results.get("ratios", {})
    lines += [
        "",
        f"| target (at {AT} clients) | wanted | measured | verdict |",
        "|---|---|---:|---|",
    ]
    for name, (op, target) in TARGETS.items():
        value = ratio.get(name)
        lines.append(f"| `{name}` | {op} {target} | {_fmt(value)} | {_verdict(name, value)} |")
    scale = results.get("scale") or {}
    idle, starts = scale.get("idle_ws") or {}, scale.get("session_start") or {}
    echo = scale.get("idle_ws_plain_echo") or {}
    if idle or starts or echo:
        lines += ["", "| scale | value |", "|---|---:|"]
        lines.append(f"| idle WebSockets held by one edge | {_fmt(idle.get('held'))} |")
        lines.append(
            f"| edge RSS per idle WebSocket (KiB) | {_fmt(idle.get('rss_kib_per_connection'))} |"
        )
        lines.append(f"| idle sockets held by the plain echo | {_fmt(echo.get('held'))} |")
        lines.append(
            f"| plain echo RSS per idle WebSocket (KiB) "
            f"| {_fmt(echo.get('rss_kib_per_connection'))} |"
        )
        lines.append(f"| sessions started per second | {_fmt(starts.get('throughput'))} |")
        spread = scale.get("config_propagation") or {}
        lines.append(
            "| agent config change acted on by a running instance, p50 / max ms "
            f"| {_fmt(spread.get('p50_ms'))} / {_fmt(spread.get('max_ms'))} |"
        )
    lines += stream_table(results)
    for section in ("orchestrator", "scale", "streams"):
        skipped = (results.get(section) or {}).get("skipped")
        if skipped:
            lines += ["", f"*{section} section skipped: {skipped}*"]
    return "\n".join(lines) + "\n"


def stream_table(results: dict) -> list[str]:
    """One row per (system, level) of the streams section; empty if it did not run."""
    streams = results.get("streams") or {}
    sweeps = [streams.get(k) for k in ("relay_floor", "orchestrator") if streams.get(k)]
    if not sweeps:
        return []
    lines = [
        "",
        f"| streams ({streams['tokens_per_answer']} tokens at "
        f"{streams['tokens_per_second_per_answer']:g}/s) | clients | first-token overhead "
        "p50 / p99 ms | tokens/s | CPU us/token per process | peak RSS MiB | "
        "lost / dup / out of order | within target |",
        "|---|---:|---:|---:|---|---|---:|---|",
    ]
    for sweep in sweeps:
        for row in sweep["levels"]:
            lat = row["first_token_overhead"]
            cpu = ", ".join(f"{k} {_fmt(v)}" for k, v in row["cpu_us_per_token"].items())
            rss = ", ".join(f"{k} {_fmt(v)}" for k, v in row["peak_rss_mib"].items())
            lines.append(
                f"| {sweep['system']} | {row['clients']} | {_fmt(lat['p50_ms'])} / "
                f"{_fmt(lat['p99_ms'])} | {_fmt(row['tokens_per_second'])} | {cpu} | {rss} | "
                f"{row['lost']} / {row['duplicated']} / {row['out_of_order']} | "
                f"{'yes' if row['within_target'] else 'no'} |"
            )
        lines.append(f"| **{sweep['system']} capacity** | **{sweep['capacity']}** | | | | | | |")
    return lines


def plot(results: dict, path: Path) -> Path | None:
    """Throughput and p99 against clients, if matplotlib happens to be installed."""
    sweep = (results.get("scale") or {}).get("sweep")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not sweep or not sweep.get("levels"):
        return None
    rows = sweep["levels"]
    clients = [row["clients"] for row in rows]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(clients, [row["throughput"] for row in rows], marker="o", label="msgs/s")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent clients")
    left.set_ylabel("messages per second")
    right = left.twinx()
    right.plot(clients, [row["final"]["p99_ms"] for row in rows], color="tab:red", marker="x")
    right.set_ylabel("p99 send -> answer (ms)")
    left.set_title(f"{sweep['system']}: chat throughput and p99")
    fig.tight_layout()
    fig.savefig(path)
    return path
