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

import aiohttp
import psutil
from loguru import logger

from orchestrator.service.runtime.nats_server import free_port

from .children import Child, ChildFailed, Usage
from .driver import Bench
from .figures import StreamLevel, Streams, StreamSweep
from .load import percentiles
from .orchestrator_procs import Orchestrator, Unavailable, start
from .plan import StreamPlan
from .stream_clients import Meter, StreamFailed, StreamSocket, TurnCheck

RELAY_PREFIX = "benchrelay"
CONNECT_PARALLEL = 64


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


async def level(
    sockets: list[StreamSocket], plan: StreamPlan, measured: dict[str, object]
) -> StreamLevel:
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
                checks.append(await sock.turn(meter, plan.tokens, timeout))
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
    lost = sum(c.lost for c in checks) + (expected_turns - len(checks)) * plan.tokens
    duplicated = sum(c.duplicated for c in checks)
    out_of_order = sum(c.out_of_order for c in checks)
    failed = len(errors) + (expected_turns - len(checks) - len(errors))
    return StreamLevel(
        clients=clients,
        turns=len(checks),
        errors=failed,
        first_error=errors[0] if errors else None,
        first_token_overhead=lat,
        tokens_per_second=round(meter.per_second, 1),
        offered_tokens_per_second=clients * plan.rate,
        tokens_delivered=delivered,
        lost=lost,
        duplicated=duplicated,
        out_of_order=out_of_order,
        missing_stamp=sum(1 for c in checks if c.overhead is None),
        cpu_us_per_token={
            name: round((u.cpu_seconds() - u._cpu0) / delivered * 1e6, 2) if delivered else None
            for name, u in usage.items()
        },
        peak_rss_mib={name: round(b / 2**20, 1) for name, b in rss.peak.items()},
        within_target=(
            lat.p99_ms is not None
            and lat.p99_ms <= plan.overhead_p99_target_ms
            and lost == duplicated == out_of_order == failed == 0
        ),
    )


async def sweep(
    name: str, own_process: str, urls_for, orchestrator: bool, plan: StreamPlan, measured
) -> StreamSweep:
    """Levels in order until one misses the target (saturation); the capacity is the last met."""
    rows: list[StreamLevel] = []
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
                name, clients, row.first_token_overhead.p50_ms, row.first_token_overhead.p99_ms,
                row.tokens_per_second, row.lost, row.cpu_us_per_token,
            )  # fmt: skip
            if not row.within_target:
                break
    finally:
        await asyncio.gather(*(s.ws.close() for s in sockets), return_exceptions=True)
        await http.close()
    met = [row.clients for row in rows if row.within_target]
    return StreamSweep(
        system=name, own_process=own_process, levels=rows, capacity=max(met) if met else 0
    )


def _agent(bench: Bench, name: str, prefix: str) -> Child:
    plan = bench.plan.streams
    args = ["--url", bench.url, "--prefix", prefix, "--tokens", str(plan.tokens),
            "--rate", str(plan.rate)]  # fmt: skip
    return bench.spawn(Child.module(name, "llm_agent", args, bench.log_dir))


async def relay_floor(bench: Bench, plan: StreamPlan, nats: Process) -> StreamSweep:
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
        return await sweep("relay floor", "relay", lambda first, n: [url] * (n - first), False,
                           plan, measured)  # fmt: skip
    finally:
        relay.stop()
        agent.stop()


async def orchestrator(
    bench: Bench, orch: Orchestrator, plan: StreamPlan, nats: Process
) -> StreamSweep:
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
        return await sweep("orchestrator", "orchestrator", urls_for, True, plan, measured)
    finally:
        agent.stop()
        orch.agent.start(False)


async def run(bench: Bench) -> Streams:
    """Both systems, the relay floor first."""
    plan = bench.plan.streams
    nats = Process("nats-server", bench.server_pid)
    relay = await relay_floor(bench, plan, nats)
    not_measured: dict[str, str] = {}
    orch_sweep: StreamSweep | None = None
    try:
        orch = await start(bench)
    except (Unavailable, ChildFailed) as exc:
        logger.warning("streams: orchestrator unavailable ({})", exc)
        not_measured["orchestrator"] = f"orchestrator unavailable: {exc}"
    else:
        orch_sweep = await orchestrator(bench, orch, plan, nats)
    return Streams(
        tokens_per_answer=plan.tokens,
        tokens_per_second_per_answer=plan.rate,
        overhead_p99_target_ms=plan.overhead_p99_target_ms,
        relay_floor=relay,
        orchestrator=orch_sweep,
        not_measured=not_measured,
    )
