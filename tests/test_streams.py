"""The buckets and streams exist with the configured limits, and creating them twice is safe."""

from __future__ import annotations

import asyncio
import os
import signal

from conftest import wait_until
from loguru import logger
from nats.js.api import RetentionPolicy

from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.streams import ensure_resources
from orchestrator.subjects import Subjects


async def test_resources_are_created_idempotently_with_configured_limits(nc):
    js = nc.jetstream()
    settings = OrchestratorSettings(max_message_bytes=4096)
    subjects = Subjects(settings.subject_prefix)
    await ensure_resources(js, settings, subjects)
    buckets = await ensure_resources(js, OrchestratorSettings(max_message_bytes=8192), subjects)

    work = await js.stream_info(settings.work_stream)
    assert work.config.max_msg_size == 8192
    assert work.config.retention == RetentionPolicy.WORK_QUEUE
    events = await js.stream_info(settings.events_stream)
    assert events.config.republish.dest == "nooble4.live.>"
    await buckets.sessions.put("t.u.s", b"{}")
    assert (await buckets.sessions.get("t.u.s")).value == b"{}"


async def test_start_up_waits_through_jetstream_requests_that_time_out(nats_server, nc):
    # A stalled server (as a fresh cluster forming its Raft groups): every request times out.
    # Start-up says so and tries again, and creates everything once the server answers.
    lines: list[str] = []
    handler = logger.add(lines.append, level="INFO", format="{message}")
    js = nc.jetstream(timeout=0.3)
    settings = OrchestratorSettings(nats_startup_timeout=120.0)
    os.kill(nats_server.pid, signal.SIGSTOP)
    try:
        creating = asyncio.create_task(ensure_resources(js, settings, Subjects()))
        await wait_until(
            lambda: sum("waiting for JetStream" in line for line in lines) >= 2, timeout=30,
            message=lambda: f"tries through timeouts, log: {lines[-3:]}",
        )  # fmt: skip
        assert not creating.done()
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)
        logger.remove(handler)
    await asyncio.wait_for(creating, timeout=60)
    assert (await js.stream_info(settings.work_stream)).config.name == settings.work_stream
