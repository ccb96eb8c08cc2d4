"""The task worker: runs each session's head turn from the work stream to an end or a pause.

Every instance pulls from one shared durable consumer. Only the head turn of a session has a work
item (service/execution/turn_dispatch.py), so the turns of one session run one at a time, in
acceptance order, on whichever instance pulls them, while different sessions run in parallel.
While a task runs its work item is kept alive with in-progress acks; if the instance dies,
JetStream redelivers the item after `task_lease` seconds to another instance, which takes the task
over (execution services de-duplicate by task id, and every event carries a de-dup id), or fails
it visibly once `task_max_deliveries` runs were started. How a turn ends is
service/execution/turn_end.py; the worker then acks its item (or has it redelivered later).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from orchestrator.codecs.errors import (
    ActionTimeout,
    Conflict,
    InternalError,
    NotFound,
)
from orchestrator.codecs.records import ChatTask, TaskStatus, WorkItem
from orchestrator.service.execution.agent_directory import AgentDirectory
from orchestrator.service.execution.execution_client import ExecutionClient
from orchestrator.service.execution.turn_dispatch import TurnDispatcher
from orchestrator.service.execution.turn_end import TurnEnd, TurnOutcome
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.ids import utcnow
from orchestrator.service.store.kv import Versioned
from orchestrator.service.store.pull_consumer import PullConsumer, PullSpec
from orchestrator.service.store.stores import Stores

CONSUMER = "chat-workers"


@dataclass
class _Running:
    """A task this instance holds: registered before its first await, so no cancel is missed."""

    cancel: asyncio.Event = field(default_factory=asyncio.Event)


class TaskWorker:
    """Runs head turns, at most `task_concurrency` at a time on this instance."""

    def __init__(
        self,
        wiring: Wiring,
        stores: Stores,
        dispatcher: TurnDispatcher,
        agents: AgentDirectory,
        execution: ExecutionClient,
    ) -> None:
        settings, subjects = wiring.settings, wiring.subjects
        self._telemetry = wiring.telemetry
        self._nc = wiring.nc
        self._subjects = subjects
        self._settings = settings
        self._tasks = stores.tasks
        self._queues = stores.turns
        self._dispatcher = dispatcher
        self._agents = agents
        self._execution = execution
        self._history = stores.history
        self._max_runs = settings.task_max_deliveries
        self._input_timeout = timedelta(seconds=settings.input_timeout)
        self._end = TurnEnd(stores, dispatcher, settings)
        self._running: dict[str, _Running] = {}
        self._cancel_sub = None
        spec = PullSpec(
            "task-worker", settings.work_stream, CONSUMER, subjects.work_all,
            ack_wait=settings.task_lease,  # runs are counted in the task record
            concurrency=settings.task_concurrency, batch=settings.task_fetch_batch, kind=WorkItem,
        )  # fmt: skip
        self._consumer = PullConsumer(wiring.js, spec, settings, self._process)

    @property
    def running(self) -> int:
        """Turns running on this instance right now."""
        return len(self._running)

    @property
    def capacity(self) -> int:
        """Turns this instance runs at once (`ORCH_TASK_CONCURRENCY`)."""
        return self._consumer.capacity

    async def start(self, supervisor: Supervisor) -> None:
        await self._consumer.start(supervisor)
        self._cancel_sub = await self._nc.subscribe(
            self._subjects.control_cancel_all, cb=self._on_cancel
        )

    async def stop(self, grace: float) -> None:
        """Stop pulling; give running tasks `grace` seconds, then hand them back unacknowledged."""
        if self._cancel_sub:
            with contextlib.suppress(NatsError):
                await self._cancel_sub.unsubscribe()
        await self._consumer.stop(grace)

    async def _on_cancel(self, msg: Msg) -> None:
        running = self._running.get(self._subjects.task_of_control_cancel(msg.subject))
        if running is not None:
            running.cancel.set()

    async def _process(self, msg: Msg, item: WorkItem) -> None:
        with self._telemetry.span_for_action("task.run", msg.headers):
            await self._handle(msg, item)

    async def _handle(self, msg: Msg, item: WorkItem) -> None:
        # Registered before the first await: a cancel published from now on is heard here.
        running = self._running.setdefault(item.task_id, _Running())
        try:
            await self._take(msg, item, running)
        finally:
            if self._running.get(item.task_id) is running:
                del self._running[item.task_id]

    async def _take(self, msg: Msg, item: WorkItem, running: _Running) -> None:
        found = await self._tasks.find(item.tenant_id, item.user_id, item.task_id)
        if found is None:
            # The intake publishes a head's item just before its record, and may have died
            # between the two: the item holds everything the record does, so write it here.
            found = await self._adopt(item)
        task = found.value
        seq = msg.metadata.sequence.stream
        if task.status.terminal:
            await self._settle(msg, await self._end.end_turn(task))
        elif task.status is TaskStatus.INPUT_REQUIRED:
            await self._await_input(msg, found, running)
        elif task.status is TaskStatus.RUNNING and task.work_seq != seq:
            await msg.ack()  # a duplicate item: another delivery runs this task
        elif task.status is TaskStatus.RUNNING and task.attempts >= self._max_runs:
            error = InternalError(
                f"gave up after {task.attempts} runs (task_max_deliveries)"
            ).body()
            await self._settle(
                msg, await self._end.finish(found, TurnOutcome(TaskStatus.FAILED, error=error))
            )
        elif task.status is TaskStatus.QUEUED and not await self._is_head(msg, task):
            return
        else:
            await self._run(msg, found, running)

    async def _is_head(self, msg: Msg, task: ChatTask) -> bool:
        """Whether a queued task is its session's head, so no other turn of it can be running.

        Otherwise the item is settled here: a head without a task record (an intake that crashed
        after queueing its turn) is waited out once with a delayed redelivery, then dropped; a
        head that is a real turn will publish this one's item again when it ends.
        """
        dropped = False
        for _ in range(self._queues.limit + 2):
            head = await self._queues.head(task.tenant_id, task.user_id, task.session_id)
            if head is None or head.task_id == task.task_id:
                return True  # not queued at all: its intake stalled; the item is its only run
            if await self._tasks.find(task.tenant_id, task.user_id, head.task_id) is not None:
                if dropped:
                    await msg.ack()
                    return False
                # Count the drop first, then look once more: the head may have ended meanwhile
                # and read this task before the count, publishing an item already stored.
                await self._tasks.count_dispatch(task)
                dropped = True
                continue
            wait = self._dispatcher.orphan_wait(head, utcnow())
            if wait > 0:
                await msg.nak(delay=wait)
                return False
            await self._queues.remove(task.tenant_id, task.user_id, head.task_id)
        await msg.nak(delay=self._settings.task_orphan_grace)
        return False

    async def _adopt(self, item: WorkItem) -> Versioned[ChatTask]:
        """The task record of an item whose intake has not written it (yet, or ever)."""
        at = item.created_at or utcnow()
        task = ChatTask(
            task_id=item.task_id, session_id=item.session_id, tenant_id=item.tenant_id,
            user_id=item.user_id, agent_id=item.agent_id, content=item.content, created_at=at,
            updated_at=at, message_seq=item.message_seq, correlation_id=item.correlation_id,
        )  # fmt: skip
        with contextlib.suppress(Conflict):
            await self._tasks.create(task)
        return await self._tasks.get(item.tenant_id, item.user_id, item.task_id)

    async def _await_input(self, msg: Msg, found: Versioned[ChatTask], running: _Running) -> None:
        """A paused task: its item doubles as the timer, redelivered when the input expires."""
        task = found.value
        since = task.input_since or task.updated_at
        left = (since + self._input_timeout - utcnow()).total_seconds()
        if left > 0:
            await msg.nak(delay=left)
            return
        error = ActionTimeout(
            f"no input within {self._settings.input_timeout}s", {"task_id": task.task_id}
        ).body()
        stored, _ = await self._tasks.move(
            task, TaskStatus.TIMED_OUT, utcnow(), found, answer=task.answer, error=error
        )
        if stored is not None and stored.value.status is TaskStatus.QUEUED:
            # Answered just now, and maybe its new item was never published: run it from here.
            await self._run(msg, stored, running)
            return
        ended = stored is not None and stored.value.status.terminal
        await self._settle(msg, await self._end.end_turn(stored.value) if ended else 0.0)

    async def _run(self, msg: Msg, found: Versioned[ChatTask], running: _Running) -> None:
        # Every write below is compare-and-set on the revision just written, so a concurrent
        # cancel is seen (and re-read) only when it happened, with no read before each write.
        now = utcnow()
        stored, moved = await self._tasks.move(
            found.value, TaskStatus.RUNNING, now, found,
            owner=self._settings.instance_id, work_seq=msg.metadata.sequence.stream,
        )  # fmt: skip
        if not moved or stored is None:
            ended = stored is not None and stored.value.status.terminal  # cancelled meanwhile
            await self._settle(msg, await self._end.end_turn(stored.value) if ended else 0.0)
            return
        task = stored.value
        # Each execution attempt appends its own `task.status running attempt=n`.
        keepalive = asyncio.create_task(self._keep_alive(msg))
        try:
            outcome = await self._execute(task, running.cancel)
        except asyncio.CancelledError:
            keepalive.cancel()
            raise  # shutting down: leave it unacked for another instance
        finally:
            keepalive.cancel()
        await self._settle(msg, await self._end.finish(stored, outcome))

    async def _execute(self, task: ChatTask, cancel: asyncio.Event) -> TurnOutcome:
        """Run the task on an execution service until it ends or `cancel` is set."""
        config = await self._agents.get(task.agent_id)
        if config is None:
            return TurnOutcome(
                TaskStatus.FAILED, error=NotFound(f"agent {task.agent_id} not found").body()
            )
        history = await self._history.load(task.tenant_id, task.user_id, task.session_id)
        outcome = await self._execution.run(
            task, config, history=history, inputs=task.inputs, cancel=cancel,
            first_attempt=self._execution.first_attempt(task.attempts),
        )  # fmt: skip
        return TurnOutcome.of(outcome)

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._settings.task_lease / 3)
            with contextlib.suppress(NatsError):
                await msg.in_progress()

    async def _settle(self, msg: Msg, redeliver_after: float) -> None:
        """Ack the item, or have it redelivered after `redeliver_after` seconds if that is > 0."""
        if redeliver_after > 0:
            await msg.nak(delay=redeliver_after)
        else:
            await msg.ack()
