"""The end of a turn hands the session over even past a send that was refused half-way.

A `chat.send` refused after it queued its turn (its `message.accepted` could not be stored while
the event stream elected a leader) leaves that turn in the user's queue with no task record and
no work item. The turn that ends before it must not give up on the session while that leftover
is still inside its orphan grace: the real turn queued behind it has no other hand-off.
"""

from __future__ import annotations

from conftest import wait_until
from support.calls import call
from support.programs import turn_agent
from support.stack import start_stack, stop_stack
from turns_helpers import send, status_of

from orchestrator.codecs.agent_configs import BusyPolicy
from orchestrator.codecs.records import QueuedTurn
from orchestrator.service.store.ids import new_id, utcnow

GRACE = 10.0  # longer than the running turn takes, so the leftover is young when it ends


async def test_a_turn_ending_while_a_refused_send_blocks_its_session_hands_off_after_the_grace(
    nats_server, tmp_path
):  # fmt: skip
    # The re-drive (the safety net) is kept out of the way: the hand-off alone must do it.
    stack = await start_stack(nats_server, agent=None, task_orphan_grace=GRACE,
                              turn_redrive_after=3600.0, execution_timeout=30.0)  # fmt: skip
    async with turn_agent(nats_server.url, tmp_path / "agent.log", delay=0.5):
        try:
            nc, turns = stack.nc, stack.orchestrator.turns
            sid = (await call(nc, "session.start", {"agent_id": "demo"})).data["session_id"]
            first = await send(nc, sid, "first")
            await wait_until(lambda: _is(nc, first["task_id"], "running"), timeout=20,
                             message="the first turn to run")  # fmt: skip
            # What the refused send left: its turn, queued, and nothing else.
            refused = QueuedTurn(task_id=new_id(), session_id=sid, at=utcnow())
            await turns.reserve("dev", "alice", refused, BusyPolicy.ENQUEUE)
            # Accepted behind it while the first still runs: its intake sees the first turn at
            # the head and leaves the hand-off to it.
            second = await send(nc, sid, "second")
            assert await status_of(nc, first["task_id"]) == "running"

            await wait_until(lambda: _is(nc, second["task_id"], "completed"), timeout=60,
                             message="the turn behind the refused send to be answered")  # fmt: skip
            assert await status_of(nc, first["task_id"]) == "completed"
            assert all(
                t.task_id != refused.task_id for t in (await turns.read("dev", "alice")).turns
            )
            assert stack.orchestrator.redrive.redriven == 0
        finally:
            await stop_stack(stack)


async def _is(nc, task_id: str, status: str) -> bool:
    return await status_of(nc, task_id) == status
