"""KV values carry every field an operator filters on, defaults included (read as raw bytes)."""

from __future__ import annotations

import json

import msgspec
from conftest import wait_until
from support.calls import call

from orchestrator.codecs.records import ChatTask, Session, SessionStatus, TaskStatus

SESSION_FIELDS = {
    "session_id", "tenant_id", "user_id", "agent_id", "status", "created_at", "updated_at",
    "last_activity_at", "expires_at", "closed_at", "close_reason", "metadata", "first_event_seq",
}  # fmt: skip
TASK_FIELDS = {
    "task_id", "session_id", "tenant_id", "user_id", "agent_id", "status", "content",
    "created_at", "updated_at", "attempts", "owner", "answer", "error", "message_seq",
    "correlation_id",
}  # fmt: skip


async def raw(stack, bucket: str, key: str) -> dict:
    kv = await stack.nc.jetstream().key_value(bucket)
    return json.loads((await kv.get(key)).value)


async def test_an_open_session_and_its_task_show_status_and_defaults_in_the_raw_kv_value(stack):
    started = await call(stack.nc, "session.start", {"agent_id": "demo"})
    sid = started.data["session_id"]
    session = await raw(stack, stack.settings.sessions_bucket, f"dev.alice.{sid}")
    assert session["status"] == "open"  # the default, written out
    assert SESSION_FIELDS <= set(session), SESSION_FIELDS - set(session)
    assert session["closed_at"] is None and session["metadata"] == {}

    sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": "hi"})
    key = f"dev.alice.{sent.data['task_id']}"

    async def completed() -> bool:
        return (await raw(stack, stack.settings.tasks_bucket, key))["status"] == "completed"

    await wait_until(completed, timeout=20, message="the task completed")
    task = await raw(stack, stack.settings.tasks_bucket, key)
    assert TASK_FIELDS <= set(task), TASK_FIELDS - set(task)
    assert task["error"] is None and task["attempts"] >= 1


def test_records_written_before_defaults_were_stored_still_decode():
    # What the orchestrator wrote while records omitted their defaults (no status, no nulls).
    old_session = (
        b'{"session_id":"s1","tenant_id":"t","user_id":"u","agent_id":"a",'
        b'"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z",'
        b'"last_activity_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-02T00:00:00Z"}'
    )
    old_task = (
        b'{"task_id":"x1","session_id":"s1","tenant_id":"t","user_id":"u","agent_id":"a",'
        b'"content":"hi","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}'
    )
    session = msgspec.json.decode(old_session, type=Session)
    task = msgspec.json.decode(old_task, type=ChatTask)
    assert session.status is SessionStatus.OPEN and session.metadata == {}
    assert task.status is TaskStatus.QUEUED and task.attempts == 0
    assert json.loads(msgspec.json.encode(session))["status"] == "open"
