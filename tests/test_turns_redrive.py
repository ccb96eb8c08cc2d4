"""A session head whose work item was lost (a publish swallowed by a leader election) still runs:
every instance re-drives heads that stay queued with no new dispatch."""

from __future__ import annotations

from conftest import wait_until
from support.calls import call
from support.stack import start_stack, stop_stack

from orchestrator.codecs.agent_configs import BusyPolicy
from orchestrator.codecs.records import ChatTask, QueuedTurn
from orchestrator.service.store.ids import new_id, utcnow


async def test_a_head_left_without_its_work_item_is_re_driven_and_answered(nats_server):
    stack = await start_stack(nats_server, turn_redrive_interval=0.2, turn_redrive_after=0.5)
    try:
        sid = (await call(stack.nc, "session.start", {"agent_id": "demo"})).data["session_id"]
        # What a lost hand-off leaves: the turn at the head of its queue and its record `queued`,
        # but no work item on CHAT_WORK (nothing was published for it).
        now = utcnow()
        task = ChatTask(
            task_id=new_id(), session_id=sid, tenant_id="dev", user_id="alice", agent_id="demo",
            content="lost in an election", created_at=now, updated_at=now,
        )  # fmt: skip
        orchestrator = stack.orchestrator
        await orchestrator.tasks.create(task)
        turn = QueuedTurn(task_id=task.task_id, session_id=sid, at=now)
        await orchestrator.turns.reserve("dev", "alice", turn, BusyPolicy.ENQUEUE)

        async def answered() -> bool:
            reply = await call(stack.nc, "task.get", {"task_id": task.task_id})
            return reply.data["status"] == "completed"

        await wait_until(answered, timeout=30, message="the stalled head to be re-driven")
        assert orchestrator.redrive.redriven >= 1
        reply = await call(stack.nc, "task.get", {"task_id": task.task_id})
        assert reply.data["answer"].endswith("lost in an election")
        # Its turn ended like any other: out of the queue, so the session takes new turns.
        assert (await orchestrator.turns.head("dev", "alice", sid)) is None
    finally:
        await stop_stack(stack)
