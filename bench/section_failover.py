"""Failover section: one of two orchestrator instances killed (SIGKILL) while it runs chats.

Two `orchestrator run --role service` instances and one `orchestrator agent` (the reference agent,
its answers paced to take about 1.6 s) serve a system of their own (prefix `benchfailover`) on the
bench's nats-server. N clients chat over NATS actions, each sending its next message once the
last is answered, until the doomed instance owns a running task; then it is killed with SIGKILL
and the clients stop sending. Measured: seconds from the kill until every chat acknowledged
before it had its final answer (`chat.response`), at the default ORCH_TASK_LEASE, and how many of
those chats did not get exactly one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter

import msgspec
from loguru import logger
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout

from orchestrator.codecs.records import TaskStatus
from orchestrator.service.store.streams import ensure_resources

from .chat_client import BenchError, NatsChat
from .children import Child
from .driver import Bench, SectionSkipped
from .figures import InstanceFailover
from .orchestrator_procs import Unavailable, executable
from .systems import (
    AGENT_ID,
    TENANT,
    system_env,
    system_settings,
    system_subjects,
    task_key,
    user_of,
)

SYSTEM = "failover"
INSTANCES = ("bench-failover-doomed", "bench-failover-survivor")
# The reference agent's pace: 4 chunks 0.4 s apart, so a chat is still running when it is killed.
AGENT_PACE = {"ORCH_AGENT_CHUNKS": "4", "ORCH_AGENT_CHUNK_DELAY": "0.4"}
READY_SECONDS = 60.0


class _Response(msgspec.Struct):
    """What the section reads of a live event; other fields are skipped by the decoder."""

    type: str = ""
    task_id: str = ""


_decode_response = msgspec.json.Decoder(_Response).decode


class _TaskOwner(msgspec.Struct):
    """What the section reads of a task record (`ChatTask`)."""

    status: TaskStatus
    owner: str | None = None


class Answers:
    """Every `chat.response` of the system: how many per task, and when the last arrived."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.at: dict[str, float] = {}
        self.arrived = asyncio.Event()

    async def on_live(self, msg: Msg) -> None:
        event = _decode_response(msg.data)
        if event.type == "chat.response":
            self.count[event.task_id] += 1
            self.at[event.task_id] = time.perf_counter()
            self.arrived.set()

    async def wait(self, task_id: str) -> None:
        """Until `task_id` is answered (the clients' loop is cancelled at the kill)."""
        while task_id not in self.count:
            self.arrived.clear()
            await self.arrived.wait()


async def _instances_answering(bench: Bench) -> set[str]:
    """Instance ids of this system's service instances that answer a micro PING."""
    inbox = bench.nc.new_inbox()
    sub = await bench.nc.subscribe(inbox)
    await bench.nc.publish("$SRV.PING.orchestrator", b"", reply=inbox)
    seen: set[str] = set()
    try:
        for _ in range(100):  # bounded: a reply per running instance
            msg = await sub.next_msg(timeout=0.3)
            if msg.data:  # an empty message is the server's "no responders" status
                seen.add(json.loads(msg.data).get("metadata", {}).get("instance", ""))
    except NatsTimeout:
        pass
    finally:
        await sub.unsubscribe()
    return seen & set(INSTANCES)


async def _start(bench: Bench, chat: NatsChat) -> tuple[Child, Child, Child]:
    """The agent and both instances, once both instances serve (an agent that fails to start
    shows as chats unanswered after the kill)."""
    settings = system_settings(SYSTEM, bench.url)
    buckets = await ensure_resources(bench.js, settings, chat.subjects)
    await buckets.agent_configs.put(
        AGENT_ID, msgspec.json.encode({"tenant_id": TENANT, "access": "tenant"})
    )
    env = {"ORCH_NATS_URL": bench.url, "ORCH_LOG_LEVEL": "WARNING", **system_env(settings)}
    agent = Child("failover-agent", [executable(), "agent"], bench.log_dir, {**env, **AGENT_PACE})
    instances = [
        Child(name, [executable(), "run", "--role", "service"], bench.log_dir,
              {**env, "ORCH_INSTANCE_ID": name})
        for name in INSTANCES
    ]  # fmt: skip
    for child in (agent, *instances):
        bench.children.append(child.start(False))

    async def both_serve() -> bool:
        return await _instances_answering(bench) == set(INSTANCES)

    async def session_starts() -> bool:
        try:
            await chat.start_session("u0")
            return True
        except (NatsError, NatsTimeout, TimeoutError, BenchError):
            return False

    await instances[0].wait_until(both_serve, READY_SECONDS)
    await instances[1].wait_until(session_starts, READY_SECONDS)
    return agent, instances[0], instances[1]


async def _owns_running_task(tasks_kv, acked: dict[str, int]) -> bool:
    """Whether the doomed instance runs one of the acknowledged chats now."""
    for task_id, index in list(acked.items()):
        try:
            entry = await tasks_kv.get(task_key(TENANT, user_of(index), task_id))
        except NatsError:
            continue  # not stored yet
        task = msgspec.json.decode(entry.value, type=_TaskOwner)
        if task.status == TaskStatus.RUNNING and task.owner == INSTANCES[0]:
            return True
    return False


async def run(bench: Bench) -> InstanceFailover:
    plan = bench.plan.failover
    settings = system_settings(SYSTEM, bench.url)
    chat = NatsChat(bench.nc, system_subjects(settings), timeout=10.0)
    try:
        children = await _start(bench, chat)
    except Unavailable as exc:
        raise SectionSkipped(str(exc)) from exc
    doomed = children[1]
    answers = Answers()
    live = await bench.nc.subscribe(chat.subjects.live_all, cb=answers.on_live)
    acked: dict[str, int] = {}  # task id -> client index, acknowledged before the kill
    errors: list[str] = []

    async def client(index: int) -> None:
        while True:
            try:
                task_id = await chat.submit(index)
            except (NatsError, NatsTimeout, TimeoutError, BenchError) as exc:
                errors.append(f"client {index}: {exc!r}")
                return
            acked[task_id] = index
            await answers.wait(task_id)

    try:
        await chat.prepare(plan.clients)
        tasks_kv = await bench.js.key_value(settings.tasks_bucket)
        clients = [asyncio.create_task(client(i)) for i in range(plan.clients)]
        try:
            deadline = time.monotonic() + plan.kill_within
            while not await _owns_running_task(tasks_kv, acked):
                if time.monotonic() > deadline or len(errors) == plan.clients:
                    raise SectionSkipped(
                        f"{INSTANCES[0]} ran no chat within {plan.kill_within}s "
                        f"(errors: {errors[:1]})"
                    )
                await asyncio.sleep(0.05)
            os.kill(doomed.pid, signal.SIGKILL)
            killed_at = time.perf_counter()
            measured = dict(acked)  # an ack still on its way came after the kill
        finally:
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
        logger.info("failover: killed {} with {} chats acknowledged", INSTANCES[0], len(measured))
        deadline = time.monotonic() + plan.answers_within
        while any(task_id not in answers.count for task_id in measured):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        return _figures(measured, answers, killed_at, plan.answers_within)
    finally:
        await live.unsubscribe()
        for child in children:
            with contextlib.suppress(OSError):
                child.stop()
            bench.children.remove(child)


def _figures(
    measured: dict[str, int], answers: Answers, killed_at: float, within: float
) -> InstanceFailover:
    lost = sum(1 for task_id in measured if answers.count[task_id] != 1)
    unanswered = [task_id for task_id in measured if task_id not in answers.count]
    if unanswered:
        return InstanceFailover(
            kill_to_last_answer_seconds=None, acknowledged=len(measured), lost=lost,
            not_measured={"kill_to_last_answer_seconds":
                          f"{len(unanswered)} chats unanswered {within}s after the kill"},
        )  # fmt: skip
    last = max(answers.at[task_id] for task_id in measured)
    return InstanceFailover(
        kill_to_last_answer_seconds=round(max(0.0, last - killed_at), 2),
        acknowledged=len(measured),
        lost=lost,
        not_measured={},
    )
