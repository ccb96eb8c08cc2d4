"""Helpers for the conversation tests: sending, statuses, and checks on a session log."""

from __future__ import annotations

from support.calls import call

from orchestrator.codecs.agent_configs import AgentConfig, BusyPolicy

ENDS = ("completed", "failed", "timed_out", "cancelled")


def busy_agent(policy: BusyPolicy) -> AgentConfig:
    return AgentConfig(tenant_id="dev", name=f"busy {policy.value}", on_busy=policy)


async def send(nc, sid: str, content: str, user: str = "alice", **envelope) -> dict:
    reply = await call(nc, "chat.send", {"session_id": sid, "content": content}, user=user,
                       **envelope)  # fmt: skip
    assert reply.error is None, reply.data
    return reply.data


async def status_of(nc, task_id: str, user: str = "alice") -> str:
    reply = await call(nc, "task.get", {"task_id": task_id}, user=user)
    return reply.data["status"]


def of_task(log: list[dict], task_id: str) -> list[dict]:
    return [r["event"] for r in log if r["event"].get("task_id") == task_id]


def check_one_turn_at_a_time(log: list[dict]) -> list[str]:
    """Never two turns of the session running at once; returns the task ids in run order.

    A turn runs from its `running` status to its final status; a second `running` of the same
    task (a takeover after an instance died) is the same turn going on.
    """
    current: str | None = None
    order: list[str] = []
    for record in log:
        event = record["event"]
        if event["type"] != "task.status":
            continue
        task = event["task_id"]
        if event["status"] == "running":
            assert current in (None, task), f"{task} ran while {current} was running"
            current = task
            if task not in order:
                order.append(task)
        elif event["status"] in (*ENDS, "input_required") and current == task:
            current = None
    return order


def last_events_are_final(log: list[dict], task_id: str) -> None:
    """The task's final status is its last event, its answer (partial if cancelled) just before,
    and that answer is exactly the text streamed since its last `running` status (the text a
    client shows: a `running` with a higher attempt discards what came before)."""
    mine = of_task(log, task_id)
    assert mine[-1]["type"] == "task.status" and mine[-1]["status"] in ENDS, mine[-3:]
    if mine[-1]["status"] in ("completed", "cancelled") and any(
        e.get("status") == "running" for e in mine
    ):
        assert mine[-2]["type"] == "chat.response", mine[-3:]
        assert mine[-2].get("partial", False) is (mine[-1]["status"] == "cancelled")
        last_run = max(i for i, e in enumerate(mine) if e.get("status") == "running")
        text = "".join(e["content"] for e in mine[last_run:] if e["type"] == "chat.chunk")
        assert mine[-2]["content"] == text, (mine[-2]["content"], text)
