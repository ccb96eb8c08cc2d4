"""Chat load and answer checks: many users chatting, and the checks that nothing acknowledged was
lost or answered twice."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import nats
from conftest import wait_until
from nats.aio.client import Client

from support.calls import Reply, call

FINAL = ("completed", "failed", "timed_out", "cancelled")
# What a caller may get instead of an answer while NATS or an instance is away: a client-side
# timeout or no-responders, never a hang.
TRANSPORT_FAILURES = (nats.errors.TimeoutError, nats.errors.NoRespondersError)


@dataclass(frozen=True)
class Acked:
    """A chat message the orchestrator acknowledged: it must end with exactly one answer."""

    user: str
    session_id: str
    task_id: str
    tenant: str = "dev"


async def open_sessions(nc: Client, users: list[str], tenant: str = "dev") -> dict[str, str]:
    """One session with the `demo` agent per user: {user: session_id}."""
    sessions: dict[str, str] = {}
    for start in range(0, len(users), 50):
        batch = users[start : start + 50]
        replies = await asyncio.gather(
            *(call(nc, "session.start", {"agent_id": "demo"}, tenant=tenant, user=u) for u in batch)
        )
        for user, reply in zip(batch, replies, strict=True):
            assert reply.error is None, reply.data
            sessions[user] = reply.data["session_id"]
    return sessions


async def session_log(nc: Client, user: str, session_id: str, tenant: str = "dev") -> list[dict]:
    """Every stored event of a session, page by page."""
    events: list[dict] = []
    after = 0
    for _ in range(1000):
        page = await call(nc, "session.events", {"session_id": session_id, "after_seq": after},
                          tenant=tenant, user=user)  # fmt: skip
        assert page.error is None, page.data
        events += page.data["events"]
        after = page.data["last_seq"]
        if not page.data["more"]:
            return events
    raise AssertionError(f"session {session_id} has too many events")


def assert_final_attempt_is_the_answer(log: list[dict], task_id: str) -> None:
    """In a session's events: no part of the task stored twice, and its final attempt's chunks,
    joined, are its `chat.response`."""
    events = [r["event"] for r in log if r["event"].get("task_id") == task_id]
    chunks = [e for e in events if e["type"] == "chat.chunk"]
    keys = [(c["attempt"], c["index"]) for c in chunks]
    assert len(keys) == len(set(keys)), keys
    [response] = [e for e in events if e["type"] == "chat.response"]
    final = [c["content"] for c in chunks if c["attempt"] == response["attempt"]]
    assert "".join(final) == response["content"], (final, response)


async def wait_all_final(nc: Client, acked: list[Acked], timeout: float = 40.0) -> dict[str, dict]:
    """Until every acknowledged task is in a final state; returns {task_id: task view}."""
    final: dict[str, dict] = {}
    last: dict[str, object] = {}

    async def all_final() -> bool:
        pending = [a for a in acked if a.task_id not in final]
        replies = await asyncio.gather(
            *(call(nc, "task.get", {"task_id": a.task_id}, tenant=a.tenant, user=a.user,
                   timeout=3) for a in pending[:200]),
            return_exceptions=True,
        )  # fmt: skip
        for item, reply in zip(pending, replies, strict=False):
            last[item.task_id] = reply.data if isinstance(reply, Reply) else reply
            if isinstance(reply, Reply) and reply.data.get("status") in FINAL:
                final[item.task_id] = reply.data
        return len(final) == len(acked)

    def stuck() -> str:
        left = {t: last.get(t) for t in {a.task_id for a in acked} - set(final)}
        return f"{len(left)} acknowledged tasks to finish: {left}"

    await wait_until(all_final, timeout, 0.3, stuck)
    return final


async def assert_answered_exactly_once(
    nc: Client, acked: list[Acked], timeout: float = 40.0
) -> dict[str, dict]:
    """Each acknowledged task completed, with one `message.accepted` and one `chat.response`.

    Every other task found in those sessions (a message whose reply was lost) is answered at
    most once too. Returns the final task views.
    """
    final = await wait_all_final(nc, acked, timeout)
    failed = {t: v for t, v in final.items() if v["status"] != "completed"}
    assert not failed, failed
    by_session: dict[tuple[str, str, str], list[Acked]] = {}
    for item in acked:
        by_session.setdefault((item.tenant, item.user, item.session_id), []).append(item)
    for (tenant, user, session_id), items in by_session.items():
        log = await session_log(nc, user, session_id, tenant)
        responses: dict[str, int] = {}
        accepted: dict[str, int] = {}
        for record in log:
            event = record["event"]
            if event["type"] == "chat.response":
                responses[event["task_id"]] = responses.get(event["task_id"], 0) + 1
            elif event["type"] == "message.accepted":
                accepted[event["task_id"]] = accepted.get(event["task_id"], 0) + 1
        for item in items:
            assert accepted.get(item.task_id) == 1, (item, accepted)
            assert responses.get(item.task_id) == 1, (item, responses)
        assert all(count == 1 for count in responses.values()), responses
        assert all(count == 1 for count in accepted.values()), accepted
    return final


class ChatLoad:
    """Users sending messages one after another until `per_user` of them are acknowledged.

    Like a real client, a user backs off (up to a second) after a failed send, and makes at most
    `max_attempts` sends; what every send got back is recorded.
    """

    def __init__(
        self, nc: Client, sessions: dict[str, str], per_user: int, pause: float = 0.1,
        max_attempts: int | None = None,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.sessions = sessions
        self.per_user = per_user
        self.pause = pause
        self.max_attempts = max_attempts or 20 * per_user
        self.acked: list[Acked] = []
        self.refused: list[str] = []
        self.lost: list[type[BaseException]] = []

    async def run(self, timeout: float = 2.0) -> None:
        await asyncio.gather(*(self._user(u, s, timeout) for u, s in self.sessions.items()))

    async def _user(self, user: str, session_id: str, timeout: float) -> None:
        acked = failures = 0
        for i in range(self.max_attempts):
            if acked == self.per_user:
                return
            failures += 1
            try:
                reply = await call(self.nc, "chat.send",
                                   {"session_id": session_id, "content": f"{user} says {i}"},
                                   user=user, timeout=timeout)  # fmt: skip
            except TRANSPORT_FAILURES as exc:
                self.lost.append(type(exc))
            else:
                if reply.error is None:
                    acked += 1
                    failures = 0
                    self.acked.append(Acked(user, session_id, reply.data["task_id"]))
                else:
                    self.refused.append(reply.code or "")
            await asyncio.sleep(min(self.pause * 2**failures, 1.0))


async def wait_every_stored_task_final(
    nc: Client, bucket: str = "tasks", timeout: float = 40.0
) -> int:
    """Until no task in the bucket is queued or running (acknowledged or not); returns the count."""
    kv = await nc.jetstream().key_value(bucket)
    open_tasks: list[str] = []
    count = 0

    async def none_open() -> bool:
        nonlocal count
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        # Task keys have three tokens; turn queues and send receipts (four) live beside them.
        keys = [key for key in keys if key.count(".") == 2]
        open_tasks.clear()
        for key in keys:
            entry = await kv.get(key)
            if entry.value and json.loads(entry.value).get("status", "queued") not in FINAL:
                open_tasks.append(key)
        count = len(keys)
        return not open_tasks

    await wait_until(none_open, timeout, 0.3, lambda: f"tasks to finish: {open_tasks}")
    return count
