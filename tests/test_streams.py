"""The buckets and streams exist with the configured limits, and creating them twice is safe."""

from __future__ import annotations

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
