"""Streams: C concurrent WebSocket clients, each its own answer of T tokens at R tokens/s.

Side by side, at increasing C until a system saturates: the relay floor (llm agent -> core NATS
-> plain aiohttp relay, stream_relay.py) and the orchestrator (`orchestrator run`, edge and
service, default settings, with the same agent). The capacity of a system is the largest C whose
p99 first-token overhead is <= 100 ms with no token lost, duplicated or out of order.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp
import psutil
from loguru import logger

from orchestrator.service.runtime.nats_server import free_port

from .children import Child, ChildFailed, Usage
from .driver import Bench
from .load import percentiles
from .orchestrator_procs import Orchestrator, Unavailable, start
from .stream_clients import Meter, StreamFailed, StreamSocket, TurnCheck

TOKENS = 200
RATE = 40.0
OVERHEAD_P99_MS = 100.0
RELAY_PREFIX = "benchrelay"
CONNECT_PARALLEL = 64


@dataclass
class Plan:
    """Levels and, per level, the start spread and turns per client."""

    levels: tuple[int, ...]
    spread: float  # seconds over which the clients' first turns start
    turns: int

    @property
    def answer_seconds(self) -> float:
        return TOKENS / RATE


class Process:
    """A process we did not spawn as a Child (the bench's nats-server), for Usage."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self._pid = pid

    def processes(self) -> list[psutil.Process]:
        try:
            return [psutil.Process(self._pid)]
        except psutil.NoSuchProcess:
            return []


class PeakRss:
    """Samples RSS of each process every half second while a level runs; keeps the peak."""

    def __init__(self, processes: dict[str, object]) -> None:
        self.processes = processes
        self.peak = dict.fromkeys(processes, 0)
        self._task: asyncio.Task | None = None

    def _sample(self) -> None:
        for name, proc in self.processes.items():
            self.peak[name] = max(self.peak[name], Usage([proc]).rss_bytes())

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(0.5)

    def __enter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_exc) -> None:
        assert self._task is not None
        self._task.cancel()
        self._sample()


async def connect_all(urls: list[str], http: aiohttp.ClientSession, orchestrator: bool):
    """Open one socket per URL, CONNECT_PARALLEL at a time; wait for the edge's session.ready."""
    sockets: list[StreamSocket] = []
    for first in range(0, len(urls), CONNECT_PARALLEL):

        async def one(url: str) -> StreamSocket:
            ws = await http.ws_connect(url, timeout=60, max_msg_size=0)
            if orchestrator:
                msg = await ws.receive(timeout=60)
                if '"session.ready"' not in str(msg.data):
                    raise StreamFailed(f"no session.ready: {str(msg.data)[:200]}")
            return StreamSocket(ws, orchestrator)

        sockets += await asyncio.gather(*(one(u) for u in urls[first : first + CONNECT_PARALLEL]))
    return sockets


async def level(sockets: list[StreamSocket], plan: Plan, measured: dict[str, object]) -> dict:
    """Every socket runs `plan.turns` turns, the first starting at a random point of the spread."""
    clients = len(sockets)
    start = time.monotonic()
    # Tokens/s is read while every client is streaming: after the spread, before the first end.
    window = plan.turns * plan.answer_seconds - plan.spread
    meter = Meter(start + plan.spread, start + plan.spread + max(1.0, window))
    checks: list[TurnCheck] = []
    errors: list[str] = []
    timeout = plan.answer_seconds * 4 + 30

    async def client(sock: StreamSocket) -> None:
        await asyncio.sleep(random.uniform(0, plan.spread))
        for _ in range(plan.turns):
            try:
                checks.append(await sock.turn(meter, TOKENS, timeout))
            except (StreamFailed, TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                errors.append(repr(exc)[:300])
                return

    usage = {name: Usage([proc]) for name, proc in measured.items()}
    with PeakRss(measured) as rss:
        await asyncio.gather(*(client(s) for s in sockets))
    delivered = sum(c.tokens for c in checks)
    overheads = [c.overhead for c in checks if c.overhead is not None]
    lat = percentiles(overheads)
    expected_turns = clients * plan.turns
    row = {
        "clients": clients,
        "turns": len(checks),
        "errors": len(errors) + (expected_turns - len(checks) - len(errors)),
        "first_error": errors[0] if errors else None,
        "first_token_overhead": lat,
        "tokens_per_second": round(meter.per_second, 1),
        "offered_tokens_per_second": clients * RATE,
        "tokens_delivered": delivered,
        "lost": sum(c.lost for c in checks) + (expected_turns - len(checks)) * TOKENS,
        "duplicated": sum(c.duplicated for c in checks),
        "out_of_order": sum(c.out_of_order for c in checks),
        "missing_stamp": sum(1 for c in checks if c.overhead is None),
        "cpu_us_per_token": {
            name: round((u.cpu_seconds() - u._cpu0) / delivered * 1e6, 2) if delivered else None
            for name, u in usage.items()
        },
        "peak_rss_mib": {name: round(b / 2**20, 1) for name, b in rss.peak.items()},
    }
    row["within_target"] = (
        lat["p99_ms"] is not None
        and lat["p99_ms"] <= OVERHEAD_P99_MS
        and row["lost"] == 0
        and row["duplicated"] == 0
        and row["out_of_order"] == 0
        and row["errors"] == 0
    )
    return row


async def sweep(name: str, urls_for, orchestrator: bool, plan: Plan, measured) -> dict:
    """Levels in order until one misses the target (saturation); the capacity is the last met."""
    rows: list[dict] = []
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets: list[StreamSocket] = []
    try:
        for clients in plan.levels:
            sockets += await connect_all(urls_for(len(sockets), clients), http, orchestrator)
            row = await level(sockets[:clients], plan, measured)
            rows.append(row)
            logger.info(
                "streams {} x{}: first-token overhead p50 {} p99 {} ms, {:.0f} tok/s, lost {}, "
                "cpu us/token {}",
                name, clients, row["first_token_overhead"]["p50_ms"],
                row["first_token_overhead"]["p99_ms"], row["tokens_per_second"], row["lost"],
                row["cpu_us_per_token"],
            )  # fmt: skip
            if not row["within_target"]:
                break
    finally:
        await asyncio.gather(*(s.ws.close() for s in sockets), return_exceptions=True)
        await http.close()
    met = [row["clients"] for row in rows if row["within_target"]]
    return {"system": name, "levels": rows, "capacity": max(met) if met else 0}


def plan_for(bench: Bench) -> Plan:
    if bench.quick:
        plan = Plan(levels=(25, 100, 250), spread=TOKENS / RATE / 2, turns=1)
    else:
        plan = Plan(levels=(50, 100, 200, 400, 700, 1000, 1400), spread=TOKENS / RATE, turns=2)
    if bench.stream_levels:
        plan.levels = bench.stream_levels
    return plan


def _agent(bench: Bench, name: str, prefix: str) -> Child:
    args = ["--url", bench.url, "--prefix", prefix, "--tokens", str(TOKENS), "--rate", str(RATE)]
    return bench.spawn(Child.module(name, "llm_agent", args, bench.log_dir))


async def relay_floor(bench: Bench, plan: Plan, nats: Process) -> dict:
    agent = _agent(bench, "stream-relay-agent", RELAY_PREFIX)
    port = free_port()
    relay = bench.spawn(
        Child.module("stream-relay", "stream_relay",
                     ["--url", bench.url, "--prefix", RELAY_PREFIX, "--port", str(port)],
                     bench.log_dir)
    )  # fmt: skip
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        measured = {"relay": relay, "agent": agent, "nats-server": nats}
        return await sweep("relay floor", lambda first, n: [url] * (n - first), False, plan,
                           measured)  # fmt: skip
    finally:
        relay.stop()
        agent.stop()


async def orchestrator(bench: Bench, orch: Orchestrator, plan: Plan, nats: Process) -> dict:
    # The demo agent shares the run subject's queue group: the LLM-like agent replaces it here.
    orch.agent.stop()
    agent = _agent(bench, "stream-orchestrator-agent", "nooble4")
    users = [f"stream{i}" for i in range(max(plan.levels))]
    sessions: list[str] = []

    def urls_for(first: int, last: int) -> list[str]:
        return [orch.ws_url(sessions[i], users[i]) for i in range(first, last)]

    for first in range(0, len(users), 32):
        batch = users[first : first + 32]
        sessions += await asyncio.gather(*(orch.chat.start_session(u) for u in batch))
    try:
        measured = {"orchestrator": orch.run, "agent": agent, "nats-server": nats}
        return await sweep("orchestrator", urls_for, True, plan, measured)
    finally:
        agent.stop()
        orch.agent.start(False)


async def run(bench: Bench) -> None:
    """Both systems into `bench.results["streams"]`."""
    plan = plan_for(bench)
    nats = Process("nats-server", bench.server_pid)
    out: dict = {"tokens_per_answer": TOKENS, "tokens_per_second_per_answer": RATE,
                 "overhead_p99_target_ms": OVERHEAD_P99_MS}  # fmt: skip
    out["relay_floor"] = await relay_floor(bench, plan, nats)
    try:
        orch = await start(bench)
    except (Unavailable, ChildFailed) as exc:
        logger.warning("streams: orchestrator unavailable ({})", exc)
        out["skipped"] = str(exc)
    else:
        out["orchestrator"] = await orchestrator(bench, orch, plan, nats)
    bench.results["streams"] = out
