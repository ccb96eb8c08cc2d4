"""The durable state of one instance: every store, opened once over its buckets and event stream.

Handlers and the worker receive this one object instead of six stores each. The stores of one
bucket share it under their own key shapes (tasks, turn queues and send receipts all live in
`tasks`); every bucket reads from the stream leader where replicas could lag (`LeaderReads`) and
counts its revision conflicts in `orchestrator.kv.conflicts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js.kv import KeyValue

from orchestrator.codecs.records import ChatTask, SendReceipt, Session, TurnQueue
from orchestrator.codecs.session_history import SessionHistory
from orchestrator.service.runtime.wiring import Wiring
from orchestrator.service.store.event_log import EventLog
from orchestrator.service.store.history import HistoryStore
from orchestrator.service.store.kv import KvPolicy, TypedBucket
from orchestrator.service.store.session_slots import SessionSlots
from orchestrator.service.store.sessions import SessionStore
from orchestrator.service.store.streams import Buckets
from orchestrator.service.store.task_events import StatusListener, TaskEvents
from orchestrator.service.store.tasks import TaskStore
from orchestrator.service.store.turns import SendReceipts, TurnQueues


@dataclass(frozen=True)
class Stores:
    """Sessions, tasks, turn queues, send receipts, history, session slots and the event log."""

    events: EventLog
    task_events: TaskEvents
    sessions: SessionStore
    tasks: TaskStore
    turns: TurnQueues
    receipts: SendReceipts
    history: HistoryStore
    slots: SessionSlots

    @classmethod
    def open(cls, wiring: Wiring, buckets: Buckets, listener: StatusListener | None) -> Stores:
        """The stores over `buckets`; `listener` is told of every `task.status` (webhooks)."""
        settings = wiring.settings

        def typed(kv: KeyValue, value_type: type[Any], name: str) -> TypedBucket[Any]:
            policy = KvPolicy.of(settings, lambda: wiring.metrics.kv_conflict(name))
            return TypedBucket(kv, value_type, policy)

        events = EventLog(wiring.js, wiring.subjects, settings)
        return cls(
            events=events,
            task_events=TaskEvents(events, listener),
            sessions=SessionStore(typed(buckets.sessions, Session, "sessions"), settings),
            tasks=TaskStore(typed(buckets.tasks, ChatTask, "tasks")),
            turns=TurnQueues(
                typed(buckets.tasks, TurnQueue, "tasks"), settings.max_inflight_tasks_per_user
            ),
            receipts=SendReceipts(
                typed(buckets.tasks, SendReceipt, "tasks"), settings.send_dedup_window
            ),
            # Leader reads: the next turn's request must see the turn that just ended.
            history=HistoryStore(typed(buckets.history, SessionHistory, "history"), settings),
            slots=SessionSlots(wiring.js, buckets.session_slots, settings),
        )
