"""The orchestrator: chat over NATS, a WebSocket round trip through the edge, the agent alone."""

from __future__ import annotations

import itertools
import time
import uuid

import aiohttp
import msgspec
from loguru import logger

from orchestrator.codecs.transport import is_error_reply

from .chat_client import BenchError
from .children import ChildFailed
from .driver import Bench, SectionSkipped
from .figures import (
    AckLevel,
    ChatLevel,
    ChatPath,
    EdgeRoundTrip,
    MeasuredProcesses,
    OrchestratorFigures,
    RttLevel,
)
from .orchestrator_procs import (
    Orchestrator,
    Unavailable,
    direct_request,
    drop_turn_queues,
    start,
)
from .systems import system_settings, user_of

_MAX_FRAMES = 1000  # frames read for one message before giving up: bounds a confused stream


class _Frame(msgspec.Struct):
    type: str = ""
    id: str | None = None
    data: dict = {}


_decode_frame = msgspec.json.Decoder(_Frame).decode


class EdgeClients:
    """One WebSocket per bench client, each on a fresh session of its own user."""

    def __init__(self, orch: Orchestrator, timeout: float = 30.0) -> None:
        self.orch = orch
        self.timeout = timeout
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.ids = itertools.count(1)

    async def ensure(self, count: int) -> None:
        while len(self.sockets) < count:
            user = user_of(len(self.sockets))
            # A fresh session: no replayed history whose chat.response could be mistaken for ours.
            sid = await self.orch.chat.start_session(user)
            url = self.orch.ws_url(sid, user)
            self.sockets.append(await self.http.ws_connect(url, timeout=self.timeout))

    async def round_trip(self, index: int) -> dict[str, float]:
        """Send chat.message; time the `ack` and the `chat.response` of the task it acked."""
        ws = self.sockets[index]
        message_id = str(next(self.ids))
        frame = {"type": "chat.message", "id": message_id, "data": {"content": "hi"}}
        t0 = time.perf_counter()
        await ws.send_str(msgspec.json.encode(frame).decode())
        observed: dict[str, float] = {}
        task_id, answered = None, {}
        deadline = t0 + self.timeout
        for _ in range(_MAX_FRAMES):
            msg = await ws.receive(timeout=max(0.001, deadline - time.perf_counter()))
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise BenchError(f"edge sent {msg.type.name} ({msg.data!r}, {msg.extra!r})")
            got = _decode_frame(msg.data)
            if got.type == "error":
                raise BenchError(msg.data[:300])
            if got.type == "ack" and got.id == message_id:
                observed["ack"] = time.perf_counter() - t0
                task_id = got.data.get("task_id")
            elif got.type == "chat.response":
                answered[got.data.get("task_id")] = time.perf_counter() - t0
            if task_id is not None and task_id in answered:
                observed["final"] = answered[task_id]
                return observed
        raise BenchError(f"no chat.response within {_MAX_FRAMES} frames")

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()
        await self.http.close()


async def nats_chat(bench: Bench, orch: Orchestrator) -> ChatPath:
    """chat.send over NATS: send -> answer, then send -> ack with the workers paused."""
    chat = orch.chat
    await chat.prepare(max(bench.plan.levels))
    await chat.listen()
    final = await bench.levels("orchestrator chat", chat.chat, ChatLevel, [orch.run])
    await chat.unlisten()
    work_stream = system_settings("orchestrator", bench.url).work_stream

    async with bench.send_path_only(work_stream) as paused:
        ack = await bench.levels("orchestrator ack", chat.ack_only, AckLevel, [orch.run])
    await drop_turn_queues(bench, [user_of(i) for i in range(len(chat.sessions))])
    return ChatPath(chat=final, ack=ack, ack_workers_paused=paused)


async def edge_round_trip(bench: Bench, orch: Orchestrator) -> EdgeRoundTrip:
    """A full WebSocket round trip through the edge at the plan's client counts."""
    clients = EdgeClients(orch)
    try:
        await clients.ensure(max(bench.plan.levels))
        rows = await bench.levels("orchestrator ws", clients.round_trip, ChatLevel, [orch.run])
    finally:
        await clients.close()
    return EdgeRoundTrip(levels=rows)


async def direct_agent(bench: Bench, orch: Orchestrator) -> list[RttLevel]:
    """An ExecutionRequest straight to the agent: the latency the orchestrator adds to."""
    subjects = orch.chat.subjects
    sid = "benchdirect"

    async def op(_: int) -> dict[str, float]:
        payload = direct_request(subjects, uuid.uuid4().hex, sid)
        t0 = time.perf_counter()
        reply = await bench.nc.request(subjects.execution_run, payload, timeout=30)
        if is_error_reply(reply.headers):
            raise BenchError(reply.data[:200])
        return {"rtt": time.perf_counter() - t0}

    levels = bench.plan.small_levels
    return await bench.levels("agent direct", op, RttLevel, [orch.agent], levels=levels)


async def run(bench: Bench) -> OrchestratorFigures:
    """Everything measured on the orchestrator; SectionSkipped if it cannot start."""
    try:
        orch = await start(bench)
    except (Unavailable, ChildFailed) as exc:
        raise SectionSkipped(str(exc)) from exc
    not_measured: dict[str, str] = {}
    nats = await nats_chat(bench, orch)
    ws: EdgeRoundTrip | None = None
    try:
        ws = await edge_round_trip(bench, orch)
    except (TimeoutError, aiohttp.ClientError, BenchError) as exc:
        logger.warning("edge round trip not measured: {!r}", exc)
        not_measured["ws"] = repr(exc)
    return OrchestratorFigures(
        nats=nats,
        ws=ws,
        direct_agent=await direct_agent(bench, orch),
        processes=MeasuredProcesses(
            measured="orchestrator run (with its edge)", agent="orchestrator agent"
        ),
        not_measured=not_measured,
    )
