"""The session event log's appends through a stream that has no leader, on a real nats-server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from conftest import wait_until
from loguru import logger

from orchestrator.codecs.events import TaskStatusChanged
from orchestrator.codecs.records import TaskStatus
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.event_log import EventLog
from orchestrator.service.store.streams import events_stream_config
from orchestrator.subjects import Subjects


async def test_an_attempts_append_waits_for_a_stream_that_answers_nobody_yet(nc):
    # A stream nobody answers for (as while its Raft group elects a leader): the append is
    # tried again until the stream answers, well within its patience, and stored once.
    settings = OrchestratorSettings(
        event_append_patience=60.0, event_append_timeout=0.5, event_append_backoff_max=0.2
    )
    subjects = Subjects()
    js = nc.jetstream()
    log = EventLog(js, subjects, settings)
    tries: list[str] = []
    handler = logger.add(
        tries.append, level="WARNING", filter=lambda r: "not stored" in r["message"]
    )
    event = TaskStatusChanged(
        session_id="s1", at=datetime.now(UTC), task_id="t1", status=TaskStatus.RUNNING, attempt=1
    )
    try:
        appending = asyncio.create_task(log.append_through_election(event, "t1.status.running.1"))
        await wait_until(lambda: len(tries) >= 2, timeout=30, message="tries without a stream")
        assert not appending.done()
        await js.add_stream(events_stream_config(settings, subjects))
        seq = await asyncio.wait_for(appending, timeout=30)
        again = await log.append_through_election(event, "t1.status.running.1")
        assert again == seq  # a repeat is de-duplicated: the original's sequence
        info = await js.stream_info(settings.events_stream)
        assert info.state.messages == 1
    finally:
        logger.remove(handler)
