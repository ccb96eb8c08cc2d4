"""OrchestratorSettings: every timeout, limit and retry count, from `ORCH_*` variables."""

from __future__ import annotations

import ipaddress
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.codecs.execution_messages import PART_CONTENT_MAX

# The secret earlier versions used by default: public, so refused everywhere.
DEV_JWT_SECRET = "dev-secret-change-me-dev-secret-change-me"
MIN_HS_SECRET_BYTES = 32
# A development process without ORCH_JWT_SECRET signs with this: its tokens die with the process.
_PROCESS_SECRET = secrets.token_urlsafe(MIN_HS_SECRET_BYTES)
# Origins a development process allows when none are configured (the page on its default port).
DEV_ORIGINS = ("http://localhost:8080", "http://127.0.0.1:8080")
MiB = 1024 * 1024


class InsecureSettings(ValueError):
    """A production process configured with development defaults (see `edge_problems`)."""


class Environment(StrEnum):
    DEV = "dev"
    PROD = "prod"


class AgentBackend(StrEnum):
    """What `orchestrator agent` answers with."""

    DEMO = "demo"
    OPENAI = "openai"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    TEXT = "text"


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of an http(s) URL, lower-cased; None for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class OrchestratorSettings(BaseSettings):
    """Built once by the CLI and passed down; invalid values fail at start with the field named."""

    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore", frozen=True)

    env: Environment = Field(
        Environment.PROD,
        description="prod (default): explicit secret and origins required; dev: local defaults",
    )
    instance_id: str = Field(
        default_factory=lambda: secrets.token_hex(4),
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Name of this instance in logs, micro metadata and task owners",
    )

    # NATS
    nats_url: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated NATS URLs; empty starts an embedded server",
    )
    nats_user: str | None = Field(None, description="NATS user name")
    nats_password: SecretStr | None = Field(None, description="NATS password")
    nats_token: SecretStr | None = Field(None, description="NATS token")
    nats_creds: Path | None = Field(None, description="Path to a NATS .creds file")
    nats_inbox_prefix: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Inbox prefix of this process's NATS connections; default `_INBOX_<role>` "
        "from ORCH_NATS_USER (each role may subscribe only to its own prefix)",
    )
    nats_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds one connection attempt may take"
    )
    nats_reconnect_wait: float = Field(
        1.0, gt=0, description="Seconds between (re)connection attempts; reconnects never give up"
    )
    nats_startup_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds start-up waits for NATS to answer, for its JetStream and for the "
        "embedded server to listen; then the process exits with one line saying what it lacked",
    )
    nats_request_timeout: float = Field(5.0, gt=0, description="Timeout of JetStream/KV API calls")
    embedded_host: str = Field(
        "127.0.0.1",
        description="Loopback address of the embedded nats-server (never reachable from outside)",
    )
    embedded_port: int = Field(4222, ge=0, le=65535, description="0 picks a free port")
    embedded_data_dir: Path = Field(
        Path(".orchestrator-data"), description="Folder of the embedded server's JetStream store"
    )

    # Names
    subject_prefix: str = Field(
        "nooble4",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="First tokens of every subject",
    )
    sessions_bucket: str = Field("sessions", description="KV bucket of sessions")
    tasks_bucket: str = Field("tasks", description="KV bucket of chat tasks")
    agent_configs_bucket: str = Field("agent_configs", description="KV bucket of agent configs")
    session_slots_bucket: str = Field(
        "session_slots", description="KV bucket of open-session quota slots"
    )
    history_bucket: str = Field(
        "history", description="KV bucket of each session's ended turns (execution history)"
    )
    events_stream: str = Field("SESSION_EVENTS", description="Stream of session events")
    work_stream: str = Field("CHAT_WORK", description="Work-queue stream of queued tasks")
    webhooks_stream: str = Field(
        "WEBHOOKS", description="Work-queue stream of webhook deliveries waiting to be sent"
    )
    replicas: int = Field(1, ge=1, le=5, description="Replicas of every bucket and stream")

    # Actions
    max_message_bytes: int = Field(1 * MiB, ge=1024, description="Largest accepted action or frame")
    action_concurrency: int = Field(256, ge=1, description="Actions processed at once per instance")
    kv_conflict_retries: int = Field(16, ge=1, description="Retries of a revision conflict")
    kv_conflict_backoff: float = Field(
        0.005, ge=0, description="Max seconds of random wait before a conflict retry, per retry"
    )
    action_pending_msgs: int = Field(
        1024,
        ge=1,
        description="Requests one action endpoint buffers while every slot is taken; beyond "
        "that the client library drops them (a slow consumer), so memory stays bounded",
    )
    action_pending_bytes: int = Field(
        64 * MiB, ge=1024, description="Bytes one action endpoint buffers at most (see above)"
    )
    action_resume_ratio: float = Field(
        0.75,
        gt=0,
        le=1,
        description="A saturated instance leaves the queue group; it rejoins when its actions "
        "in flight fall to this share of ORCH_ACTION_CONCURRENCY",
    )

    leader_read_timeout: float = Field(
        1.0,
        gt=0,
        description="Seconds one read from a stream leader may take before it is tried again "
        "(a stream has no leader while one is being elected)",
    )
    leader_read_attempts: int = Field(
        8,
        ge=1,
        description="Tries of a leader read; with the timeout above, how long a read "
        "waits through a leader election",
    )

    # Background loops
    loop_restart_backoff_initial: float = Field(
        0.5, gt=0, description="Seconds before a failed background loop is restarted"
    )
    loop_restart_backoff_max: float = Field(
        30.0, gt=0, description="Longest wait before restarting a loop that keeps failing"
    )
    loop_failure_threshold: int = Field(
        3, ge=1, description="Failures in a row that make a loop (and /health/ready) fail"
    )
    loop_stable_after: float = Field(
        60.0, gt=0, description="Seconds a restarted loop must run to count as recovered"
    )

    # Sessions
    session_ttl: float = Field(86400.0, gt=0, description="Seconds a session lives at most")
    session_idle_timeout: float = Field(1800.0, gt=0, description="Seconds of inactivity to expiry")
    session_sweep_interval: float = Field(30.0, gt=0, description="Seconds between expiry sweeps")
    session_touch_interval: float = Field(
        60.0, ge=0, description="Min seconds between activity writes"
    )

    # Execution and tasks
    execution_timeout: float = Field(30.0, gt=0, description="Seconds per execution attempt")
    execution_max_retries: int = Field(3, ge=0, description="Retries after the first attempt")
    execution_backoff_initial: float = Field(
        0.5, ge=0, description="Seconds before the first retry (jittered)"
    )
    execution_backoff_max: float = Field(
        5.0, ge=0, description="Longest wait between retries, seconds"
    )
    execution_backoff_multiplier: float = Field(
        2.0, ge=1, description="Growth of the wait between retries"
    )
    execution_heartbeat_interval: float = Field(
        1.0, gt=0, description="Seconds between heartbeats an execution service is asked to send"
    )
    execution_heartbeat_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds without a part or heartbeat after which an attempt is abandoned "
        "and retried (must exceed the heartbeat interval)",
    )
    execution_parts_wait: float = Field(
        2.0,
        gt=0,
        description="Seconds a reply waits for the parts it counts that are still in flight",
    )
    execution_part_max_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=PART_CONTENT_MAX,
        description="Largest stream message (part) accepted from an execution service, bytes",
    )
    execution_stream_pending_msgs: int = Field(
        10_000,
        ge=16,
        description="Stream messages of one attempt received but not yet handled, at most; "
        "beyond it the attempt fails (retryable, a `slow_consumer` drop) instead of queueing "
        "without bound",
    )
    execution_stream_pending_bytes: int = Field(
        8 * 1024 * 1024,
        description="Bytes of one attempt's stream messages received but not yet handled, at "
        "most (more than ORCH_EXECUTION_PART_MAX_BYTES); beyond it the attempt fails "
        "(retryable, a `slow_consumer` drop)",
    )
    stream_flush_ms: float = Field(
        100.0,
        ge=0,
        description="Milliseconds text parts are gathered into one chat.chunk event "
        "(the first part of an answer is stored at once); each event is a JetStream write and "
        "a frame per socket, so this sets the cost of a streamed answer",
    )
    stream_flush_bytes: int = Field(
        16 * 1024, ge=1, description="Bytes of gathered text that trigger a chat.chunk at once"
    )
    history_max_turns: int = Field(
        50, ge=0, description="Earlier turns sent with each execution request (newest kept)"
    )
    history_max_bytes: int = Field(
        128 * 1024,
        ge=0,
        description="Bytes of earlier turns' text sent with each execution request (newest "
        "kept); at most half of ORCH_MAX_MESSAGE_BYTES, as request and KV value must fit",
    )
    task_concurrency: int = Field(
        4096,
        ge=1,
        description="Tasks executed at once per instance; a running task mostly waits on its "
        "execution service (a coroutine, no thread), so this bounds memory, not CPU, and must "
        "exceed the answers streamed at once",
    )
    max_inflight_tasks_per_user: int = Field(
        8,
        ge=1,
        description="Unfinished turns (queued, running or waiting for input) per user, across "
        "their sessions; a send beyond it is refused with rate_limited",
    )
    task_lease: float = Field(
        8.0,
        gt=0,
        description="Seconds before a dead instance's running task moves to another instance "
        "(in-progress acks every third of it)",
    )
    task_max_deliveries: int = Field(
        3, ge=1, description="Runs of one task that may start (a takeover is a run) before it fails"
    )
    input_timeout: float = Field(
        3600.0,
        gt=0,
        description="Seconds a task waits in input_required for task.respond before timed_out",
    )
    send_dedup_window: float = Field(
        120.0,
        gt=0,
        description="Seconds a chat.send id (envelope action_id, chat.message frame id) is "
        "remembered: a repeat returns the first send's task; at most events_duplicate_window",
    )
    task_fetch_batch: int = Field(
        16, ge=1, description="Work items a worker pulls at once (never more than its free slots)"
    )
    task_fetch_wait: float = Field(
        1.0, gt=0, description="Seconds one pull for work waits when none is queued"
    )
    pull_bind_timeout: float = Field(
        1.0,
        gt=0,
        description="Seconds one lookup (or creation) of a durable pull consumer (work items, "
        "webhooks) may take before it is tried again: none answers while the consumer elects "
        "its leader",
    )
    pull_bind_attempts: int = Field(
        30,
        ge=1,
        description="Tries of binding a pull consumer, at start-up and after its pulls go "
        "unanswered, before start-up fails or the loop is restarted by its supervisor",
    )
    pull_bind_backoff_initial: float = Field(
        0.1, gt=0, description="Seconds before the second try of binding a pull consumer (doubling)"
    )
    pull_bind_backoff_max: float = Field(
        1.0, gt=0, description="Longest wait between two tries of binding a pull consumer, seconds"
    )
    work_retry_delay: float = Field(
        0.5,
        gt=0,
        description="Seconds before a work item (or webhook delivery) whose handling failed on a "
        "NATS error (a leader election) is delivered again, instead of its full ack wait",
    )
    work_publish_attempts: int = Field(
        12,
        ge=1,
        description="Tries of publishing a turn's work item while the work stream has no leader "
        "(an election after a node loss takes up to ~10 s); the item's de-dup id makes a "
        "repeat harmless",
    )
    work_publish_timeout: float = Field(
        1.0,
        gt=0,
        description="Seconds one try of a work item publish waits for JetStream's ack before "
        "the next try (short, so the tries follow a leader election closely; a repeat is "
        "de-duplicated)",
    )
    work_publish_backoff_initial: float = Field(
        0.1, gt=0, description="Seconds before the second try of a work item publish (doubling)"
    )
    work_publish_backoff_max: float = Field(
        2.0, gt=0, description="Longest wait between two tries of a work item publish, seconds"
    )
    turn_redrive_interval: float = Field(
        10.0,
        gt=0,
        description="Seconds between two looks at the turn queues for a session head that makes "
        "no progress (its work item lost in a leader election); each look reads every queue",
    )
    turn_redrive_after: float = Field(
        20.0,
        gt=0,
        description="Seconds a session head may stay queued, with no new dispatch, before it gets "
        "a fresh work item (a surplus item is dropped by the worker)",
    )
    task_orphan_grace: float = Field(
        5.0,
        gt=0,
        description="Seconds a queued turn without a task record (its intake crashed) blocks its "
        "session before it is dropped",
    )
    task_retention: float = Field(7 * 86400.0, gt=0, description="Seconds task records are kept")

    # Session events
    event_append_patience: float = Field(
        12.0,
        gt=0,
        description="Seconds an attempt's start and parts are tried again while the session "
        "events stream has no leader (a Raft election after a node loss takes up to ~10 s), "
        "before the attempt fails; a repeat is de-duplicated",
    )
    event_append_timeout: float = Field(
        1.0,
        gt=0,
        description="Seconds one try of such an append waits for JetStream's ack before the next",
    )
    event_append_backoff_initial: float = Field(
        0.1, gt=0, description="Seconds before the second try of such an append (doubling)"
    )
    event_append_backoff_max: float = Field(
        1.0, gt=0, description="Longest wait between two tries of such an append, seconds"
    )
    events_max_age: float = Field(7 * 86400.0, gt=0, description="Seconds session events are kept")
    events_max_bytes: int = Field(
        1024 * MiB,
        ge=-1,
        description="Size cap of the event stream (-1: none); when reached, new events are "
        "refused rather than anyone's history evicted",
    )
    events_max_msgs: int = Field(
        -1, ge=-1, description="Message cap of the event stream (-1: none)"
    )
    events_duplicate_window: float = Field(120.0, gt=0, description="Seconds of publish de-dup")
    events_max_per_session: int = Field(
        10_000,
        ge=100,
        description="Events kept per session: beyond, that session's oldest go first (no "
        "session can evict another's history; a full stream refuses new events instead)",
    )

    # Quotas
    max_open_sessions_per_user: int = Field(
        20, ge=1, description="Open sessions one user may hold (session.start: conflict)"
    )
    max_open_sessions_per_tenant: int = Field(
        10_000, ge=1, description="Open sessions one tenant may hold (session.start: conflict)"
    )
    max_content_bytes: int = Field(
        64 * 1024, ge=1, description="Largest chat message content (UTF-8 bytes)"
    )
    closed_session_retention: float = Field(
        7 * 86400.0,
        gt=0,
        description="Seconds a closed (or expired) session stays readable in KV before removal",
    )
    sessions_max_bytes: int = Field(
        1024 * MiB, ge=-1, description="Size cap of the sessions bucket (-1: none)"
    )
    tasks_max_bytes: int = Field(
        1024 * MiB, ge=-1, description="Size cap of the tasks bucket (-1: none)"
    )
    agent_configs_max_bytes: int = Field(
        64 * MiB, ge=-1, description="Size cap of the agent configs bucket (-1: none)"
    )
    history_bucket_max_bytes: int = Field(
        1024 * MiB, ge=-1, description="Size cap of the history bucket (-1: none)"
    )

    # Agent configs
    agent_cache_ttl: float = Field(
        30.0, gt=0, description="Seconds a management-subject answer lives"
    )
    agent_lookup_timeout: float = Field(
        2.0, gt=0, description="Seconds a management-subject lookup may take"
    )
    agent_cache_max_entries: int = Field(
        10_000, ge=1, description="Management-subject answers (found or not) cached at most"
    )

    # Edge
    edge_host: str = Field("127.0.0.1", description="Address the edge listens on")
    edge_port: int = Field(
        8080, ge=0, le=65535, description="Port the edge listens on (0: a free one)"
    )
    edge_public_url: str | None = Field(
        None, description="Base URL clients use; defaults from host"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS (comma-separated; required in prod, never '*'; "
        "dev defaults to the local page)",
    )
    ws_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins whose pages may open a WebSocket (comma-separated; required in "
        "prod, never '*'; dev defaults to the local page; clients sending no Origin pass)",
    )
    edge_header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection may take to send a complete request head (also the "
        "idle keep-alive limit between requests)",
    )
    edge_max_header_bytes: int = Field(
        8190, ge=1024, description="Longest request line or header field the edge reads"
    )
    edge_max_connections: int = Field(
        4096,
        ge=1,
        description="Connections one edge process holds at once; beyond, 503 (lowered at start "
        "to stay ORCH_EDGE_FD_RESERVE below the open-file limit)",
    )
    edge_fd_reserve: int = Field(
        256, ge=16, description="File descriptors kept free for NATS, logs and files"
    )
    ws_max_per_user: int = Field(
        8, ge=1, description="WebSockets one user may hold open on one edge process (close 1013)"
    )
    ws_heartbeat: float = Field(20.0, gt=0, description="Seconds between WebSocket pings")
    ws_idle_timeout: float = Field(
        900.0,
        gt=0,
        description="Seconds without a chat.message or auth.refresh frame before close 4408 "
        "(pings do not count)",
    )
    ws_catch_up_rounds: int = Field(
        5, ge=1, description="Catch-up rounds when live events overflow a join's seam buffer"
    )
    ws_max_frame_bytes: int = Field(
        1 * MiB, ge=1024, description="Largest WebSocket frame accepted"
    )
    ws_send_queue: int = Field(
        256, ge=1, description="Frames buffered per slow client before close 4008"
    )
    ws_send_queue_bytes: int = Field(
        4 * MiB, ge=1024, description="Bytes buffered per slow client before close 4008"
    )
    ws_rate: float = Field(10.0, gt=0, description="Messages per second per connection")
    ws_burst: int = Field(20, ge=1, description="Burst of the per-connection rate limit")
    user_rate: float = Field(20.0, gt=0, description="Requests per second per user at the edge")
    user_burst: int = Field(40, ge=1, description="Burst of the per-user rate limit")
    token_refresh_warning: float = Field(30.0, ge=0, description="Seconds before expiry to warn")
    shutdown_grace: float = Field(10.0, ge=0, description="Seconds to drain on SIGTERM")
    edge_action_timeout: float = Field(
        10.0, gt=0, description="Seconds the edge waits for the orchestrator to answer an action"
    )
    edge_busy_retry_initial: float = Field(
        0.02,
        gt=0,
        description="Seconds before the edge sends again an action no instance took (every "
        "instance saturated, or none running); doubles per try within ORCH_EDGE_ACTION_TIMEOUT",
    )
    edge_busy_retry_max: float = Field(
        0.5, gt=0, description="Longest wait between such tries, seconds"
    )
    sse_heartbeat: float = Field(
        15.0, gt=0, description="Seconds between Server-Sent Events heartbeat comments"
    )

    # Python client (orchestrator.client)
    client_action_timeout: float = Field(
        10.0, gt=0, description="Seconds the Python client waits for an action's reply"
    )
    client_busy_retry_initial: float = Field(
        0.02,
        gt=0,
        description="Seconds before the Python client sends again an action no instance took; "
        "doubles per try within ORCH_CLIENT_ACTION_TIMEOUT",
    )
    client_busy_retry_max: float = Field(
        0.5, gt=0, description="Longest wait between such tries of the Python client, seconds"
    )
    client_events_poll: float = Field(
        5.0,
        gt=0,
        description="Seconds the Python client's event iterator waits for a live event before "
        "it reads the stream again (catches up on events missed while NATS was away)",
    )
    client_reconnect_check: float = Field(
        0.5,
        gt=0,
        description="Seconds between the event iterator's looks at the NATS reconnect count while "
        "it waits (a local check; after a reconnect it reads what it missed)",
    )
    client_events_buffer: int = Field(
        1000,
        ge=1,
        description="Live events the Python client's event iterator holds unread; beyond, it "
        "drops them and reads the stream instead (nothing is lost)",
    )
    client_retry_initial: float = Field(
        0.1,
        gt=0,
        description="Seconds the event iterator waits before reading again after NATS or the "
        "orchestrator did not answer; doubles per failure",
    )
    client_retry_max: float = Field(
        5.0, gt=0, description="Longest wait of the event iterator between failed reads, seconds"
    )
    # Webhooks (docs/webhooks.md)
    webhook_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="The only origins (scheme://host[:port], comma-separated) a webhook is sent "
        "to; an agent's webhook_url elsewhere is never called. Empty: webhooks off",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Signing secret of every tenant without its own (`whsec_<base64>` as in "
        "Standard Webhooks, or any string); no secret: that tenant's webhooks are not sent",
    )
    webhook_tenant_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Per-tenant signing secrets, JSON: {"acme": "whsec_..."}',
    )
    webhook_timeout: float = Field(
        10.0, gt=0, description="Seconds one webhook POST may take before it counts as failed"
    )
    webhook_max_attempts: int = Field(
        10, ge=1, le=1000, description="Attempts of one webhook before it is given up (logged)"
    )
    webhook_backoff_initial: float = Field(
        1.0, gt=0, description="Seconds before a failed webhook is tried again; doubles per try"
    )
    webhook_backoff_max: float = Field(
        600.0, gt=0, description="Longest wait between two tries of one webhook, seconds"
    )
    webhook_concurrency: int = Field(
        16, ge=1, description="Webhook POSTs in flight at once per instance"
    )
    webhook_queue_max_msgs: int = Field(
        100_000,
        ge=1,
        description="Deliveries the WEBHOOKS queue holds; beyond, new ones are dropped (logged), "
        "never a chat refused",
    )

    health_check_timeout: float = Field(1.0, gt=0, description="Seconds /health/ready waits on KV")
    ws_close_timeout: float = Field(
        5.0, gt=0, description="Seconds to wait for a client's close reply before dropping it"
    )

    # JWT
    jwt_algorithm: str = Field(
        "HS256",
        pattern=r"^(HS256|HS384|HS512|RS256|RS384|RS512|ES256|ES384)$",
        description="The one accepted JWT algorithm",
    )
    jwt_secret: SecretStr | None = Field(
        None,
        description=f"HMAC secret for HS* tokens, at least {MIN_HS_SECRET_BYTES} bytes; required "
        "in prod (dev without it signs with a random per-process secret)",
    )
    jwt_private_key: Path | None = Field(
        None, description="PEM used by `orchestrator token` for RS/ES"
    )
    jwt_public_key: Path | None = Field(None, description="PEM public key for RS/ES")
    jwt_jwks_file: Path | None = Field(None, description="JWKS file for RS/ES (instead of a PEM)")
    jwt_audience: str = Field("nooble4", description="Required `aud` claim")
    jwt_issuer: str = Field("nooble4", description="Required `iss` claim")
    jwt_leeway: float = Field(5.0, ge=0, description="Seconds of clock skew allowed on exp/nbf/iat")
    jwt_token_ttl: float = Field(3600.0, gt=0, description="Lifetime of tokens `token` prints")

    # Telemetry and logs
    log_format: LogFormat = Field(
        LogFormat.AUTO, description="auto (json in prod, text in dev), json or text"
    )
    log_level: str = Field("INFO", description="Lowest level logged")
    otel_endpoint: str | None = Field(
        None, description="OTLP endpoint; tracing/metrics off if unset"
    )
    otel_service_name: str = Field(
        "nooble4-orchestrator", description="service.name of traces and metrics"
    )
    metrics_prometheus: bool = Field(False, description="Serve /metrics on the edge")

    _csv_nats = field_validator("nats_url", mode="before")(_csv)

    @field_validator("embedded_host")
    @classmethod
    def _loopback(cls, host: str) -> str:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError("the embedded nats-server listens on a loopback address only")
        return host

    _csv_cors = field_validator(
        "cors_origins", "ws_origins", "webhook_allowed_origins", mode="before"
    )(_csv)

    @model_validator(mode="after")
    def _check(self) -> OrchestratorSettings:
        if self.jwt_secret is not None:
            secret = self.jwt_secret.get_secret_value()
            if secret == DEV_JWT_SECRET:
                raise ValueError("ORCH_JWT_SECRET is the public example secret; set your own")
            if self.jwt_algorithm.startswith("HS") and len(secret.encode()) < MIN_HS_SECRET_BYTES:
                raise ValueError(
                    f"ORCH_JWT_SECRET must be at least {MIN_HS_SECRET_BYTES} bytes "
                    f"(e.g. `openssl rand -hex 32`)"
                )
        if not self.jwt_algorithm.startswith("HS") and not (
            self.jwt_public_key or self.jwt_jwks_file
        ):
            raise ValueError(
                f"{self.jwt_algorithm} needs ORCH_JWT_PUBLIC_KEY or ORCH_JWT_JWKS_FILE"
            )
        if self.send_dedup_window > self.events_duplicate_window:
            raise ValueError("ORCH_SEND_DEDUP_WINDOW must be <= ORCH_EVENTS_DUPLICATE_WINDOW")
        if self.execution_heartbeat_timeout <= self.execution_heartbeat_interval:
            raise ValueError(
                "ORCH_EXECUTION_HEARTBEAT_TIMEOUT must exceed ORCH_EXECUTION_HEARTBEAT_INTERVAL"
            )
        for origin in self.webhook_allowed_origins:
            if origin_of(origin) != origin.rstrip("/"):
                raise ValueError(
                    f"ORCH_WEBHOOK_ALLOWED_ORIGINS: {origin!r} is not scheme://host[:port] "
                    "(http or https, no path)"
                )
        if self.execution_stream_pending_bytes <= self.execution_part_max_bytes:
            raise ValueError(
                "ORCH_EXECUTION_STREAM_PENDING_BYTES must exceed ORCH_EXECUTION_PART_MAX_BYTES"
            )
        if self.execution_backoff_max < self.execution_backoff_initial:
            raise ValueError("ORCH_EXECUTION_BACKOFF_MAX must be >= ORCH_EXECUTION_BACKOFF_INITIAL")
        if self.work_publish_backoff_max < self.work_publish_backoff_initial:
            raise ValueError(
                "ORCH_WORK_PUBLISH_BACKOFF_MAX must be >= ORCH_WORK_PUBLISH_BACKOFF_INITIAL"
            )
        return self

    def edge_problems(self) -> list[str]:
        """Why this edge may not serve in prod (one line each); empty in dev or when all is set.

        Only processes that verify tokens and serve pages need these: `orchestrator agent` and
        `run --role service` hold no user-facing secret, so they are not refused for it.
        """
        if self.env is not Environment.PROD:
            return []
        problems = []
        if self.jwt_algorithm.startswith("HS") and self.jwt_secret is None:
            problems.append(
                f"ORCH_JWT_SECRET must be set in prod (at least {MIN_HS_SECRET_BYTES} bytes, "
                "e.g. `openssl rand -hex 32`; or ORCH_ENV=dev)"
            )
        for name, origins in (("CORS", self.cors_origins), ("WS", self.ws_origins)):
            if not origins:
                problems.append(
                    f"ORCH_{name}_ORIGINS must list the page origins in prod "
                    "(comma-separated, e.g. https://chat.example.com)"
                )
            elif "*" in origins:
                problems.append(f"ORCH_{name}_ORIGINS may not be '*' in prod")
        return problems

    @property
    def hs_secret(self) -> str:
        """The HMAC key: ORCH_JWT_SECRET, else (dev only) this process's random secret."""
        return self.jwt_secret.get_secret_value() if self.jwt_secret else _PROCESS_SECRET

    @property
    def allowed_cors_origins(self) -> list[str]:
        """CORS origins in force: the configured ones, else (dev only) the local page."""
        return self.cors_origins or list(DEV_ORIGINS)

    @property
    def allowed_ws_origins(self) -> list[str]:
        """WebSocket Origins in force: the configured ones, else (dev only) the local page."""
        return self.ws_origins or list(DEV_ORIGINS)

    @property
    def embedded(self) -> bool:
        """True when no NATS URL is configured: the program runs its own nats-server."""
        return not self.nats_url


class AgentSettings(BaseSettings):
    """Execution services on the SDK (`orchestrator agent` among them), from `ORCH_AGENT_*`."""

    model_config = SettingsConfigDict(env_prefix="ORCH_AGENT_", extra="ignore", frozen=True)

    backend: AgentBackend = Field(
        AgentBackend.DEMO,
        description="demo (deterministic echo) or openai (any OpenAI-compatible Chat Completions "
        "server: OpenAI, vLLM, Ollama, llama.cpp)",
    )
    openai_base_url: str = Field(
        "https://api.openai.com/v1",
        description="Base URL of the OpenAI-compatible API; `/chat/completions` is appended",
    )
    openai_api_key: SecretStr | None = Field(
        None, description="Bearer key for the OpenAI-compatible API (unset: no Authorization)"
    )
    openai_model: str = Field(
        "",
        description="Model name sent to the server for every agent (a vLLM server serves one "
        "model); empty: each agent config's model.name",
    )
    openai_connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to connect to the model server"
    )
    openai_read_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds the model server may stay silent (before its first token or "
        "between two streamed chunks) before the attempt fails as a retryable timeout",
    )
    openai_timeout: float = Field(
        300.0, gt=0, description="Seconds one streamed completion may take in all"
    )
    chunks: int = Field(4, ge=1, le=1000, description="Chunks each answer is streamed in")
    chunk_delay: float = Field(0.02, ge=0, description="Seconds between chunks")
    delay: float = Field(0.0, ge=0, description="Extra seconds before answering (make it slow)")
    fail_first: int = Field(0, ge=0, description="Fail this many attempts of each task (flaky)")
    fail_always: bool = Field(False, description="Fail every attempt")
    concurrency: int = Field(
        4096,
        ge=1,
        description="Requests served at once; a request streaming a model's answer mostly "
        "waits (a coroutine), so this must exceed the answers streamed at once",
    )
    dedup_cache: int = Field(10_000, ge=1, description="Answers remembered for retried task ids")
    stream_flush_ms: float = Field(
        50.0,
        ge=0,
        description="Answer text is coalesced for up to this many ms before it is published "
        "as one part (the first text of an answer goes at once; 0 sends every piece alone)",
    )
    stream_flush_bytes: int = Field(
        16_384,
        ge=64,
        le=PART_CONTENT_MAX,
        description="Coalesced text is published once it reaches this many UTF-8 bytes; also "
        "the largest text part (longer text is split)",
    )
