"""The JetStream resources the orchestrator owns: four KV buckets and two streams."""

from __future__ import annotations

import asyncio
import time

from loguru import logger
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError
from nats.js.kv import KeyValue

from orchestrator.codecs.errors import StartupFailed
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.event_log import NO_LEADER
from orchestrator.subjects import Subjects


class Buckets:
    """The KV buckets every component shares, opened once."""

    def __init__(
        self,
        sessions: KeyValue,
        tasks: KeyValue,
        agent_configs: KeyValue,
        session_slots: KeyValue,
        history: KeyValue,
    ) -> None:
        self.sessions = sessions
        self.tasks = tasks
        self.agent_configs = agent_configs
        self.session_slots = session_slots
        self.history = history


def events_stream_config(settings: OrchestratorSettings, subjects: Subjects) -> StreamConfig:
    """Session events: limits retention, de-dup window, republished with sequence.

    One stream for every tenant, bounded per session: past `events_max_per_session` a session's
    own oldest events go, and a full stream refuses new events (`discard: new`) instead of
    dropping the oldest of all. So no tenant can evict another's history; only age
    (`events_max_age`) removes events across sessions. (Per-tenant streams would isolate as
    well, at the price of a stream per tenant to create, watch and limit.)
    """
    return StreamConfig(
        name=settings.events_stream,
        description="Nooble4 session events, one subject per session",
        subjects=[subjects.events_all],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        max_msgs_per_subject=settings.events_max_per_session,
        max_age=settings.events_max_age,
        max_bytes=settings.events_max_bytes,
        max_msgs=settings.events_max_msgs,
        max_msg_size=settings.max_message_bytes,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=settings.events_duplicate_window,
        # Direct gets may be answered by a lagging replica; with several, reads go to the leader.
        allow_direct=settings.replicas == 1,
        # Live delivery: each stored event is republished with its stream sequence in headers.
        republish=RePublish(src=subjects.events_tree, dest=subjects.live_tree),
    )


def work_stream_config(settings: OrchestratorSettings, subjects: Subjects) -> StreamConfig:
    """Work items of head turns: a work queue; the user's turn queue bounds what is in flight."""
    return StreamConfig(
        name=settings.work_stream,
        description="Nooble4 chat tasks waiting for or under execution",
        subjects=[subjects.work_all],
        retention=RetentionPolicy.WORK_QUEUE,
        discard=DiscardPolicy.NEW,
        max_msg_size=settings.max_message_bytes,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=settings.events_duplicate_window,
    )


def webhooks_stream_config(settings: OrchestratorSettings, subjects: Subjects) -> StreamConfig:
    """Webhook deliveries waiting to be sent: a work queue; full means new ones are dropped."""
    return StreamConfig(
        name=settings.webhooks_stream,
        description="Nooble4 webhook deliveries waiting to be sent",
        subjects=[subjects.webhooks_all],
        retention=RetentionPolicy.WORK_QUEUE,
        discard=DiscardPolicy.NEW,
        max_msgs=settings.webhook_queue_max_msgs,
        max_msg_size=settings.max_message_bytes,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=settings.events_duplicate_window,
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except APIError as exc:
        if exc.err_code != 10058:  # stream name already in use with a different configuration
            raise
        await js.update_stream(config)


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        return await js.create_key_value(config)
    except APIError as exc:
        if exc.err_code != 10058:
            raise
        stream = await js.stream_info(Subjects.kv_stream(config.bucket))
        cfg = stream.config
        cfg.max_age = config.ttl or 0
        cfg.max_bytes = config.max_bytes
        cfg.num_replicas = config.replicas
        cfg.allow_direct = config.direct
        await js.update_stream(cfg)
        return await js.key_value(config.bucket)


async def ensure_resources(
    js: JetStreamContext, settings: OrchestratorSettings, subjects: Subjects
) -> Buckets:
    """Create or update the buckets and streams (idempotent; safe from many instances at once).

    Waits up to `nats_startup_timeout` for JetStream (it may still be recovering its store right
    after the server started, or a fresh cluster still forming the Raft groups: a request may
    then time out), saying so each time; a server without JetStream never answers, and start-up
    then fails with one line.
    """
    deadline = time.monotonic() + settings.nats_startup_timeout
    attempt = 0
    while True:
        try:
            return await _ensure_all(js, settings, subjects)
        except NO_LEADER as exc:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartupFailed(
                    f"JetStream did not answer within {settings.nats_startup_timeout}s "
                    "(ORCH_NATS_STARTUP_TIMEOUT): the NATS server needs JetStream enabled "
                    "(`nats-server -js`, or a `jetstream {}` block in its config)"
                ) from None
            logger.info(
                "waiting for JetStream: no answer from its API yet ({}, attempt {}; a server "
                "without JetStream never answers)",
                type(exc).__name__, attempt,
            )  # fmt: skip
            await asyncio.sleep(min(0.1 * attempt, 2.0, left))


async def _ensure_all(
    js: JetStreamContext, settings: OrchestratorSettings, subjects: Subjects
) -> Buckets:
    def kv(
        bucket: str, description: str, max_bytes: int, ttl: float | None = None, history: int = 1
    ) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=bucket,
            description=description,
            history=history,
            ttl=ttl,
            max_bytes=max_bytes,
            max_value_size=settings.max_message_bytes,
            storage=StorageType.FILE,
            replicas=settings.replicas,
            direct=settings.replicas == 1,  # as for the events stream: leader reads when replicated
        )

    # A session's last write is at most its lifetime (or idle timeout) old while it is open, so
    # a key older than that plus the retention is a closed one: the bucket's max age removes it.
    lifetime = max(settings.session_ttl, settings.session_idle_timeout)
    sessions = await _ensure_bucket(
        js,
        kv(
            settings.sessions_bucket,
            "Nooble4 chat sessions",
            settings.sessions_max_bytes,
            ttl=lifetime + settings.closed_session_retention,
        ),
    )
    tasks = await _ensure_bucket(
        js,
        kv(
            settings.tasks_bucket,
            "Nooble4 chat tasks",
            settings.tasks_max_bytes,
            ttl=settings.task_retention,
        ),
    )
    agents = await _ensure_bucket(
        js,
        kv(
            settings.agent_configs_bucket,
            "Nooble4 agent configs",
            settings.agent_configs_max_bytes,
            history=5,
        ),
    )
    # One key per open session (see store/session_slots.py); a lost release expires with the
    # longest a session can stay open.
    slots = await _ensure_bucket(
        js,
        kv(
            settings.session_slots_bucket,
            "Nooble4 open-session quota slots",
            settings.sessions_max_bytes,
            ttl=lifetime,
        ),
    )
    # A session lives at most `session_ttl`; its history is useless after that.
    history = await _ensure_bucket(
        js,
        kv(
            settings.history_bucket,
            "Nooble4 session turns",
            settings.history_bucket_max_bytes,
            ttl=settings.session_ttl,
        ),
    )
    await _ensure_stream(js, events_stream_config(settings, subjects))
    await _ensure_stream(js, work_stream_config(settings, subjects))
    if settings.webhook_allowed_origins:  # webhooks on
        await _ensure_stream(js, webhooks_stream_config(settings, subjects))
    return Buckets(sessions, tasks, agents, slots, history)
