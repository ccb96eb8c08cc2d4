"""Floor (c): exactly the JetStream writes and request-replies one chat message needs, no more.

`--role service` answers session.start and chat.send and runs the worker, as one orchestrator
process would; `--role exec` is the execution stand-in (N text parts to the attempt's stream
subject, then the reply). The service stores the parts as one coalesced chunk event.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import nats
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from orchestrator.codecs.actions import ChatAccepted, SendChat, StartSession
from orchestrator.codecs.envelope import DomainAction
from orchestrator.codecs.events import ChatChunk, ChatResponse, MessageAccepted, TaskStatusChanged
from orchestrator.codecs.execution_messages import (
    ExecutionAgent,
    ExecutionRequest,
    ExecutionResult,
    TextPart,
)
from orchestrator.codecs.records import ChatTask, Session, TaskStatus, WorkItem
from orchestrator.codecs.transport import MSG_ID_HEADER
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.streams import ensure_resources
from orchestrator.subjects import Subjects

from .children import announce_ready, until_signalled
from .systems import session_key, system_settings, system_subjects, task_key

_encode = msgspec.json.Encoder().encode
_decode_send = msgspec.json.Decoder(DomainAction[SendChat]).decode
_decode_start = msgspec.json.Decoder(DomainAction[StartSession]).decode
_decode_request = msgspec.json.Decoder(ExecutionRequest).decode
_decode_result = msgspec.json.Decoder(ExecutionResult).decode
_decode_part = msgspec.json.Decoder(TextPart).decode


_decode_work = msgspec.json.Decoder(WorkItem).decode


async def _guarded(work) -> None:
    try:
        await work
    except Exception as exc:  # noqa: BLE001 - outermost boundary of one handler task
        logger.opt(exception=exc).warning("floor handler failed: {!r}", exc)


class FloorService:
    """The send path and the worker, with no validation beyond decoding and no retries."""

    def __init__(self, nc: Client, js: JetStreamContext, settings: OrchestratorSettings) -> None:
        self.nc, self.js, self.settings = nc, js, settings
        self.subjects: Subjects = system_subjects(settings)
        self.agent = ExecutionAgent()
        self.actions = asyncio.Semaphore(settings.action_concurrency)
        self.tasks = asyncio.Semaphore(settings.task_concurrency)
        self.running: set[asyncio.Task] = set()

    async def open(self) -> None:
        buckets = await ensure_resources(self.js, self.settings, self.subjects)
        self.sessions_kv, self.tasks_kv = buckets.sessions, buckets.tasks
        await self.nc.subscribe(self.subjects.action("session.start"), cb=self._spawn(self.start))
        await self.nc.subscribe(self.subjects.action("chat.send"), cb=self._spawn(self.send))
        self.work = await self.js.pull_subscribe(
            self.subjects.work_all, durable="floor-worker", stream=self.settings.work_stream
        )

    def _spawn(self, handler):
        async def cb(msg: Msg) -> None:
            await self.actions.acquire()
            task = asyncio.create_task(_guarded(handler(msg)))
            self.running.add(task)
            task.add_done_callback(self._done_action)

        return cb

    def _done_action(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        self.actions.release()

    async def start(self, msg: Msg) -> None:
        action = _decode_start(msg.data)
        now = datetime.now(UTC)
        sid = uuid.uuid4().hex
        session = Session(
            session_id=sid, tenant_id=action.tenant_id, user_id=action.user_id,
            agent_id=action.data.agent_id, created_at=now, updated_at=now,
            last_activity_at=now, expires_at=now + timedelta(seconds=self.settings.session_ttl),
        )  # fmt: skip
        await self.sessions_kv.create(
            session_key(action.tenant_id, action.user_id, sid), _encode(session)
        )
        await msg.respond(_encode({"session_id": sid}))

    async def send(self, msg: Msg) -> None:
        action = _decode_send(msg.data)
        tenant, user, sid = action.tenant_id, action.user_id, action.data.session_id
        await self.sessions_kv.get(session_key(tenant, user, sid))
        now = datetime.now(UTC)
        task_id = uuid.uuid4().hex
        task = ChatTask(
            task_id=task_id, session_id=sid, tenant_id=tenant, user_id=user, agent_id="demo",
            content=action.data.content, created_at=now, updated_at=now,
        )  # fmt: skip
        # The task record goes first so the worker can never see a work item without it.
        await self.tasks_kv.create(task_key(tenant, user, task_id), _encode(task))
        work = WorkItem(
            task_id=task_id, tenant_id=tenant, user_id=user, session_id=sid, agent_id="demo",
            content=action.data.content,
        )  # fmt: skip
        await self.js.publish(
            self.subjects.work(tenant, user), _encode(work), headers={MSG_ID_HEADER: task_id}
        )
        accepted = MessageAccepted(
            session_id=sid, at=now, task_id=task_id, message_id=task_id, content=task.content
        )
        ack = await self._event(sid, accepted, f"{task_id}.accepted")
        reply = ChatAccepted(task_id=task_id, session_id=sid, status=TaskStatus.QUEUED, seq=ack.seq)
        await msg.respond(_encode(reply))

    async def _event(self, sid: str, event, msg_id: str):
        return await self.js.publish(
            self.subjects.session_events(sid), _encode(event), headers={MSG_ID_HEADER: msg_id}
        )

    async def run_worker(self) -> None:
        """Pull work items and run each as a task, at most `task_concurrency` at once."""
        while True:
            try:
                batch = await self.work.fetch(batch=64, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                continue
            for msg in batch:
                await self.tasks.acquire()
                task = asyncio.create_task(_guarded(self.execute(msg)))
                self.running.add(task)
                task.add_done_callback(self._done_task)

    def _done_task(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        self.tasks.release()

    async def execute(self, msg: Msg) -> None:
        item = _decode_work(msg.data)
        key = task_key(item.tenant_id, item.user_id, item.task_id)
        sid, task_id = item.session_id, item.task_id
        now = datetime.now(UTC)
        task = ChatTask(
            task_id=task_id, session_id=sid, tenant_id=item.tenant_id, user_id=item.user_id,
            agent_id="demo", content=item.content, created_at=now, updated_at=now,
            status=TaskStatus.RUNNING, attempts=1,
        )  # fmt: skip
        revision = await self.tasks_kv.put(key, _encode(task))
        running = TaskStatusChanged(session_id=sid, at=now, task_id=task_id, status=task.status)
        await self._event(sid, running, f"{task_id}.running.1")
        stream = self.subjects.execution_stream(task_id, 1, uuid.uuid4().hex)
        request = ExecutionRequest(
            task_id=task_id, session_id=sid, tenant_id=item.tenant_id, user_id=item.user_id,
            agent_id="demo", agent=self.agent, content=item.content, attempt=1,
            stream_subject=stream,
        )  # fmt: skip
        parts: list[str] = []

        async def collect(part_msg: Msg) -> None:
            parts.append(_decode_part(part_msg.data).content)

        sub = await self.nc.subscribe(stream, cb=collect)
        try:
            reply = await self.nc.request(
                self.subjects.execution_run, _encode(request),
                timeout=self.settings.execution_timeout,
            )  # fmt: skip
        finally:
            await sub.unsubscribe()
        _decode_result(reply.data)
        answer = "".join(parts)
        chunk = ChatChunk(session_id=sid, at=now, task_id=task_id, index=0, content=answer,
                          attempt=1)  # fmt: skip
        await self._event(sid, chunk, f"{task_id}.chunk.1.0")
        done = datetime.now(UTC)
        response = ChatResponse(session_id=sid, at=done, task_id=task_id, content=answer)
        await self._event(sid, response, f"{task_id}.response")
        completed = msgspec.structs.replace(
            task, status=TaskStatus.COMPLETED, answer=answer, updated_at=done
        )
        await self.tasks_kv.update(key, _encode(completed), last=revision)
        finished = TaskStatusChanged(
            session_id=sid, at=done, task_id=task_id, status=TaskStatus.COMPLETED
        )
        await self._event(sid, finished, f"{task_id}.completed")
        await msg.ack()


async def serve_exec(nc: Client, subjects: Subjects, chunks: int) -> None:
    """The execution stand-in: N text parts to the stream subject (core NATS), then the reply."""

    async def run(msg: Msg) -> None:
        request = _decode_request(msg.data)
        for index in range(chunks):
            part = TextPart(
                task_id=request.task_id, attempt=request.attempt, index=index,
                content=f"{request.content}-{index} ",
            )  # fmt: skip
            await nc.publish(request.stream_subject, _encode(part))
        result = ExecutionResult(task_id=request.task_id, attempt=request.attempt, parts=chunks)
        await msg.respond(_encode(result))

    running: set[asyncio.Task] = set()

    async def cb(msg: Msg) -> None:
        task = asyncio.create_task(_guarded(run(msg)))
        running.add(task)
        task.add_done_callback(running.discard)

    await nc.subscribe(subjects.execution_run, queue="bench-exec", cb=cb)


async def main(role: str, url: str, chunks: int) -> None:
    settings = system_settings("floor", url)
    nc = await nats.connect(url, name=f"bench-floor-{role}")
    js = nc.jetstream(timeout=settings.nats_request_timeout)
    worker: asyncio.Task | None = None
    if role == "service":
        service = FloorService(nc, js, settings)
        await service.open()
        worker = asyncio.create_task(service.run_worker())
    else:
        await serve_exec(nc, system_subjects(settings), chunks)
    await nc.flush()
    announce_ready()
    await until_signalled()
    if worker:
        worker.cancel()
    await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=["service", "exec"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--chunks", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.role, args.url, args.chunks))
