"""The peer a user would pick instead: the chat send path as a FastStream NATS subscriber.

Pydantic models validate the envelope; the handler does the same KV read and JetStream writes as
the durable floor's send path, then replies. Run as a separate process; prints READY when serving.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from faststream import FastStream
from faststream.nats import NatsBroker
from pydantic import BaseModel, ConfigDict, Field

from .children import announce_ready
from .systems import session_key, system_settings, system_subjects, task_key

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartData(Strict):
    agent_id: Id
    metadata: dict[str, str] = {}


class SendData(Strict):
    session_id: Id
    content: Annotated[str, Field(min_length=1)]


class StartEnvelope(Strict):
    tenant_id: Id
    user_id: Id
    data: StartData


class SendEnvelope(Strict):
    tenant_id: Id
    user_id: Id
    data: SendData


class SessionRecord(BaseModel):
    session_id: str
    tenant_id: str
    user_id: str
    agent_id: str
    status: str = "open"
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    expires_at: datetime


class TaskRecord(BaseModel):
    task_id: str
    session_id: str
    tenant_id: str
    user_id: str
    agent_id: str
    status: str = "queued"
    content: str
    created_at: datetime
    updated_at: datetime


class WorkItem(BaseModel):
    task_id: str
    tenant_id: str
    user_id: str
    session_id: str
    content: str


class MessageAccepted(BaseModel):
    type: Literal["message.accepted"] = "message.accepted"
    session_id: str
    at: datetime
    task_id: str
    message_id: str
    content: str


class SessionStarted(BaseModel):
    session_id: str


class ChatAccepted(BaseModel):
    task_id: str
    session_id: str
    status: str
    seq: int


def build(url: str) -> FastStream:
    """The FastStream app: two subscribers, one per action, on the peer's own resources."""
    settings = system_settings("peer", url)
    subjects = system_subjects(settings)
    # logger=None: per-message log lines would cost the peer time the orchestrator does not spend.
    broker = NatsBroker(url, logger=None)
    app = FastStream(broker, logger=None)
    kv: dict = {}

    @app.after_startup
    async def ready() -> None:
        kv["sessions"] = await broker.key_value(settings.sessions_bucket, declare=False)
        kv["tasks"] = await broker.key_value(settings.tasks_bucket, declare=False)
        announce_ready()

    @broker.subscriber(subjects.action("session.start"), max_workers=settings.action_concurrency)
    async def start(body: StartEnvelope) -> SessionStarted:
        now = datetime.now(UTC)
        sid = uuid.uuid4().hex
        record = SessionRecord(
            session_id=sid, tenant_id=body.tenant_id, user_id=body.user_id,
            agent_id=body.data.agent_id, created_at=now, updated_at=now, last_activity_at=now,
            expires_at=now + timedelta(seconds=settings.session_ttl),
        )  # fmt: skip
        key = session_key(body.tenant_id, body.user_id, sid)
        await kv["sessions"].create(key, record.model_dump_json().encode())
        return SessionStarted(session_id=sid)

    @broker.subscriber(subjects.action("chat.send"), max_workers=settings.action_concurrency)
    async def send(body: SendEnvelope) -> ChatAccepted:
        tenant, user, sid = body.tenant_id, body.user_id, body.data.session_id
        await kv["sessions"].get(session_key(tenant, user, sid))
        now = datetime.now(UTC)
        task_id = uuid.uuid4().hex
        task = TaskRecord(
            task_id=task_id, session_id=sid, tenant_id=tenant, user_id=user, agent_id="demo",
            content=body.data.content, created_at=now, updated_at=now,
        )  # fmt: skip
        await kv["tasks"].create(task_key(tenant, user, task_id), task.model_dump_json().encode())
        work = WorkItem(
            task_id=task_id, tenant_id=tenant, user_id=user, session_id=sid, content=task.content
        )
        await broker.publish(
            work, subjects.work(tenant, user), stream=settings.work_stream,
            headers={"Nats-Msg-Id": task_id},
        )  # fmt: skip
        event = MessageAccepted(
            session_id=sid, at=now, task_id=task_id, message_id=task_id, content=task.content
        )
        ack = await broker.publish(
            event, subjects.session_events(sid), stream=settings.events_stream,
            headers={"Nats-Msg-Id": f"{task_id}.accepted"},
        )  # fmt: skip
        return ChatAccepted(task_id=task_id, session_id=sid, status="queued", seq=ack.seq)

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    asyncio.run(build(parser.parse_args().url).run())
