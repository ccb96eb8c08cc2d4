"""The systems under test, each with its own subject prefix and JetStream resources."""

from __future__ import annotations

from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.subjects import Subjects

TENANT = "bench"
AGENT_ID = "demo"
CONTENT = "hi"
# Ack-only load may queue far more tasks per user than a person would; the per-user bound would
# refuse them, so every system under test gets this one (the same for all, so ratios stay fair).
BENCH_INFLIGHT_PER_USER = 1_000_000
# Actions in progress per process, above the 256 clients of the largest level: at the default (256)
# the orchestrator's action server, all slots taken, leaves its queue groups (its overload answer,
# no responders) and the bench would measure that instead of the send path. Same for every system.
BENCH_ACTION_CONCURRENCY = 1024


def system_settings(name: str, url: str) -> OrchestratorSettings:
    """Settings of a bench system: `floor` and `peer` get their own prefix, buckets and streams."""
    if name == "orchestrator":
        return OrchestratorSettings(
            nats_url=[url],
            action_concurrency=BENCH_ACTION_CONCURRENCY,
            max_inflight_tasks_per_user=BENCH_INFLIGHT_PER_USER,
            max_open_sessions_per_tenant=BENCH_INFLIGHT_PER_USER,
            max_open_sessions_per_user=BENCH_INFLIGHT_PER_USER,
        )
    upper = name.upper()
    return OrchestratorSettings(
        nats_url=[url],
        subject_prefix=f"bench{name}",
        sessions_bucket=f"bench_{name}_sessions",
        tasks_bucket=f"bench_{name}_tasks",
        agent_configs_bucket=f"bench_{name}_agent_configs",
        events_stream=f"BENCH_{upper}_EVENTS",
        work_stream=f"BENCH_{upper}_WORK",
        session_slots_bucket=f"bench_{name}_session_slots",
        history_bucket=f"bench_{name}_history",
        webhooks_stream=f"BENCH_{upper}_WEBHOOKS",
        action_concurrency=BENCH_ACTION_CONCURRENCY,
        max_inflight_tasks_per_user=BENCH_INFLIGHT_PER_USER,
        max_open_sessions_per_tenant=BENCH_INFLIGHT_PER_USER,
        max_open_sessions_per_user=BENCH_INFLIGHT_PER_USER,
    )


# The settings naming a system's subjects, buckets and streams (its processes get them as ORCH_*).
NAME_FIELDS = (
    "subject_prefix", "sessions_bucket", "tasks_bucket", "agent_configs_bucket",
    "session_slots_bucket", "history_bucket", "events_stream", "work_stream", "webhooks_stream",
)  # fmt: skip


def system_env(settings: OrchestratorSettings) -> dict[str, str]:
    """The ORCH_* variables giving an `orchestrator` process this system's names."""
    return {f"ORCH_{name.upper()}": str(getattr(settings, name)) for name in NAME_FIELDS}


def system_subjects(settings: OrchestratorSettings) -> Subjects:
    """The subject space of a bench system."""
    return Subjects(settings.subject_prefix)


def echo_subject() -> str:
    """Where the raw request-reply floor's echo responder listens."""
    return Subjects("benchecho").action("echo")


def session_key(tenant_id: str, user_id: str, session_id: str) -> str:
    """Key of a session record, as the orchestrator keys them."""
    return f"{tenant_id}.{user_id}.{session_id}"


def task_key(tenant_id: str, user_id: str, task_id: str) -> str:
    """Key of a task record, as the orchestrator keys them."""
    return f"{tenant_id}.{user_id}.{task_id}"


def user_of(index: int) -> str:
    """Each bench client is its own user, so per-user limits apply as they would in production."""
    return f"u{index}"
