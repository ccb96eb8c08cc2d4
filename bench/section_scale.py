"""Scale: session start rate, idle WebSockets held by one edge, and a 1..256 client sweep."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import Callable

import aiohttp
import msgspec
from loguru import logger

from orchestrator.service.runtime.nats_server import free_port
from orchestrator.service.store.streams import ensure_resources

from . import propagation
from .chat_client import NatsChat
from .children import Child, ChildFailed, Usage
from .driver import Bench
from .figures import ChatLevel, EdgeIdleSockets, IdleSockets, Scale, SessionStartLevel, Sweep
from .load import Budget, closed_loop
from .orchestrator_procs import Unavailable, start, start_edge
from .systems import system_settings, system_subjects, user_of

CONNECT_PARALLEL = 64
STARTERS = 64  # concurrent session.start callers (users u0..u63)


async def session_start_rate(
    bench: Bench, chat: NatsChat, wanted: int
) -> tuple[SessionStartLevel, list[tuple[str, str]]]:
    """Closed-loop session.start at 64 callers; the (user, session) pairs it created."""
    created: list[tuple[str, str]] = []

    async def op(index: int) -> dict[str, float]:
        user = user_of(index)
        t0 = time.perf_counter()
        sid = await chat.start_session(user)
        created.append((user, sid))
        return {"start": time.perf_counter() - t0}

    # Long enough to create a session per idle connection, bounded by count and time.
    budget = Budget(warmup=0, duration=bench.plan.session_start_seconds, max_ops=wanted)
    result = await closed_loop(STARTERS, op, budget)
    row = SessionStartLevel(**result.summary(), **result.latencies_of(("start",)))
    return row, created


async def _joined(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """True once the edge has joined the socket to its session (its `session.ready` frame)."""
    msg = await ws.receive(timeout=60)
    return msg.type is aiohttp.WSMsgType.TEXT and '"session.ready"' in msg.data


async def hold_idle(
    url_of: Callable[[int], str], process: Child, target: int, bench: Bench, joined: bool
) -> IdleSockets:
    """Open up to `target` idle WebSockets to one process; RSS of that process per connection.

    With `joined`, a socket counts only after its `session.ready` frame: the edge has finished
    the handshake's actions and replay, so RSS is read in the steady idle state, not mid-join.
    """
    usage = Usage([process])
    gc.collect()
    await asyncio.sleep(bench.plan.idle_settle / 4)
    rss_before = usage.rss_bytes()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    failures, first_failure = 0, None
    deadline = time.monotonic() + bench.plan.idle_seconds
    counter = itertools.count()
    started = time.monotonic()

    async def opener() -> None:
        nonlocal failures, first_failure
        while time.monotonic() < deadline:
            index = next(counter)
            if index >= target or failures > 100:
                return
            try:
                ws = await http.ws_connect(url_of(index), timeout=30)
                sockets.append(ws)
                if joined and not await _joined(ws):
                    raise aiohttp.ClientError("no session.ready frame")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failures += 1
                first_failure = first_failure or repr(exc)[:300]

    try:
        await asyncio.gather(*(opener() for _ in range(CONNECT_PARALLEL)))
        connect_seconds = time.monotonic() - started
        await asyncio.sleep(bench.plan.idle_settle)  # timers of the handshake's requests run out
        held = sum(1 for ws in sockets if not ws.closed)
        rss_after = usage.rss_bytes()
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await http.close()
    per = (rss_after - rss_before) / held / 1024 if held else None
    logger.info("idle ws: held {} of {}; {} KiB each", held, target, per and round(per, 2))
    return IdleSockets(
        target=target,
        held=held,
        failures=failures,
        first_failure=first_failure,
        connect_seconds=round(connect_seconds, 2),
        connects_per_second=round(len(sockets) / connect_seconds, 1) if connect_seconds else None,
        rss_mib_before=round(rss_before / 2**20, 1),
        rss_mib_after=round(rss_after / 2**20, 1),
        rss_kib_per_connection=round(per, 2) if per is not None else None,
    )


async def sweep(bench: Bench, chat: NatsChat, system: str, measured: list[Child]) -> Sweep:
    """Send -> answer throughput and p99 from one client to many."""
    levels, budget = bench.plan.sweep_levels, bench.plan.sweep_budget
    await chat.prepare(max(levels))
    await chat.listen()
    rows = await bench.levels(
        f"{system} sweep", chat.chat, ChatLevel, measured, levels=levels, budget=budget
    )
    await chat.unlisten()
    return Sweep(system=system, levels=rows)


async def idle_plain_echo(bench: Bench) -> IdleSockets:
    """The floor for idle sockets: the same count held by a plain aiohttp echo server."""
    port = free_port()
    echo = bench.spawn(
        Child.module("echo-ws-idle", "echo_ws", ["--port", str(port)], bench.log_dir)
    )
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        return await hold_idle(lambda _: url, echo, bench.plan.idle_target, bench, joined=False)
    finally:
        echo.stop()


async def floor_scale(bench: Bench, reason: str) -> Scale:
    """No orchestrator: sweep the durable floor, hold idle sockets on the plain echo."""
    settings = system_settings("floor", bench.url)
    await ensure_resources(bench.js, settings, system_subjects(settings))
    service = next((c for c in bench.children if c.name == "floor-service" and c.proc), None)
    if service is None:
        args = ["--url", bench.url, "--chunks", str(bench.plan.chunks)]
        for role in ("exec", "service"):
            service = bench.spawn(
                Child.module(f"floor-{role}", "floor", ["--role", role, *args], bench.log_dir)
            )
    chat = NatsChat(bench.nc, system_subjects(settings))
    missing = f"orchestrator unavailable: {reason}"
    return Scale(
        session_start=None,
        idle_ws=None,
        idle_ws_plain_echo=await idle_plain_echo(bench),
        config_propagation=None,
        sweep=await sweep(bench, chat, "durable floor", [service]),
        not_measured=dict.fromkeys(("session_start", "idle_ws", "config_propagation"), missing),
    )


async def edge_idle(bench: Bench, orch, created: list[tuple[str, str]]) -> EdgeIdleSockets:
    """Idle sockets joined to the `created` sessions on an edge-only process."""
    edge, ws_url = await start_edge(bench, orch)

    def url_of(index: int) -> str:
        user, sid = created[index % len(created)]
        return ws_url(sid, user)

    try:
        held = await hold_idle(url_of, edge, bench.plan.idle_target, bench, joined=True)
    finally:
        edge.stop()
    return EdgeIdleSockets(
        **msgspec.structs.asdict(held),
        sessions_used=len(created),
        process="orchestrator run --role edge",
    )


async def run(bench: Bench) -> Scale:
    """Everything measured at scale; the floors stand in if the orchestrator is absent."""
    try:
        orch = await start(bench)
    except (Unavailable, ChildFailed) as exc:
        logger.warning("scale: orchestrator unavailable ({}); measuring the floors instead", exc)
        return await floor_scale(bench, str(exc))
    not_measured: dict[str, str] = {}
    session_start, created = await session_start_rate(bench, orch.chat, bench.plan.idle_target)
    idle_ws = None
    if created:
        idle_ws = await edge_idle(bench, orch, created)
    else:
        not_measured["idle_ws"] = f"no session started: {session_start.first_error}"
    idle_echo = await idle_plain_echo(bench)
    config_propagation = await propagation.measure(bench)
    logger.info("agent config propagation: {}", config_propagation)
    return Scale(
        session_start=session_start,
        idle_ws=idle_ws,
        idle_ws_plain_echo=idle_echo,
        config_propagation=config_propagation,
        sweep=await sweep(bench, orch.chat, "orchestrator", [orch.run]),
        not_measured=not_measured,
    )
