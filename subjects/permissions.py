"""Trust zones: which account each role lives in and what each role may publish and subscribe.
The single source of nats.conf, k8s/nats/nats.conf and the embedded server's configuration (all
rendered by `orchestrator.subjects.nats_conf`).

Two accounts. `APP` holds the orchestrator, the edge and operators, with JetStream (the KV
buckets, the session events, the work queue). `EXECUTION` holds execution services, which may be
third-party code: it has no JetStream and sees only what `APP` exports to it, namely the run
requests and cancels (stream exports), and it can reach back only the per-attempt stream
subjects and the orchestrator's execution-reply inbox (service exports). A reply therefore works
by grant on every cluster node, not by a per-server `allow_responses` record.

Every role has its own inbox prefix (`_INBOX_<role>`; nats-py `inbox_prefix`) and may subscribe
to that prefix only, so no role overhears another's replies, KV reads or work deliveries.
`tests/test_nats_permissions.py` proves the grants against a real nats-server. Subscribe entries
of the form `"<subject> <queue>"` allow only that queue group, as nats-server reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.subjects.names import Role, Subjects

SERVICE_DISCOVERY = "$SRV.>"
JS_ACK = "$JS.ACK.>"
JS_FLOW_CONTROL = "$JS.FC.>"
# Queue groups are part of the grant: nats micro's default for the action endpoints, and the one
# the reference execution service (service/agent/reference_agent.py) joins.
ACTIONS_QUEUE = "q"
EXECUTION_QUEUE = "execution"


APP_ACCOUNT = "APP"
EXECUTION_ACCOUNT = "EXECUTION"
# The orchestrator's execution requests use a connection of their own with this inbox prefix:
# the only inbox the execution account can publish to, and one no other request uses.
EXECUTION_REPLY_INBOX = "_INBOX_orchestrator_exec"


def inbox_prefix(role: Role) -> str:
    """The inbox prefix a role's connections use (nats-py `inbox_prefix`)."""
    return f"_INBOX_{role.value}"


def _inbox(role: Role) -> str:
    return f"{inbox_prefix(role)}.>"


@dataclass(frozen=True)
class Resources:
    """JetStream names the grants refer to; defaults equal OrchestratorSettings' defaults."""

    events_stream: str = "SESSION_EVENTS"
    work_stream: str = "CHAT_WORK"
    sessions_bucket: str = "sessions"
    tasks_bucket: str = "tasks"
    agent_configs_bucket: str = "agent_configs"
    session_slots_bucket: str = "session_slots"
    history_bucket: str = "history"


@dataclass(frozen=True)
class Responses:
    """nats-server `allow_responses`: reply `max` times to a received request within `expires` s."""

    max: int = 1
    expires: float = 300.0


@dataclass(frozen=True)
class Permission:
    """One user's grants; deny wins over allow, as in nats-server."""

    publish_allow: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    responses: Responses | None = None


def _js_api(*tokens: str) -> str:
    return ".".join(("$JS.API", *tokens))


def stream_reads(stream: str) -> tuple[str, ...]:
    """Stream info and message gets (direct and API) on one stream."""
    return (
        _js_api("STREAM", "INFO", stream),
        _js_api("DIRECT", "GET", stream),
        _js_api("DIRECT", "GET", stream, ">"),
        _js_api("STREAM", "MSG", "GET", stream),
    )


def consumer_use(stream: str) -> tuple[str, ...]:
    """Create, pull from, inspect and remove consumers of one stream."""
    return (
        _js_api("CONSUMER", "CREATE", stream),
        _js_api("CONSUMER", "CREATE", stream, ">"),
        _js_api("CONSUMER", "MSG", "NEXT", stream, ">"),
        _js_api("CONSUMER", "INFO", stream, ">"),
        _js_api("CONSUMER", "DELETE", stream, ">"),
    )


def stream_api_any(stream: str) -> tuple[str, ...]:
    """Every JetStream API subject that names `stream` (after 2 or 3 operation tokens)."""
    return (
        _js_api("*", "*", stream),
        _js_api("*", "*", stream, ">"),
        _js_api("*", "*", "*", stream),
        _js_api("*", "*", "*", stream, ">"),
    )


def _edge(subjects: Subjects, names: Resources) -> Permission:
    events = names.events_stream
    return Permission(
        publish_allow=(
            subjects.actions_all,
            # Readiness: the buckets' streams must answer (sizes only; no key is readable).
            _js_api("STREAM", "INFO", Subjects.kv_stream(names.sessions_bucket)),
            _js_api("STREAM", "INFO", Subjects.kv_stream(names.tasks_bucket)),
            *stream_reads(events),
            *consumer_use(events),
            f"$JS.ACK.{events}.>",
            JS_FLOW_CONTROL,
        ),
        subscribe_allow=(subjects.live_tree, _inbox(Role.EDGE)),
    )


def _orchestrator(subjects: Subjects, names: Resources, edge: Permission) -> Permission:
    buckets = (
        names.sessions_bucket,
        names.tasks_bucket,
        names.agent_configs_bucket,
        names.session_slots_bucket,
        names.history_bucket,
    )
    own_publish = (
        _js_api(">"),
        JS_ACK,
        *(Subjects.kv_api(bucket) for bucket in buckets),
        subjects.events_tree,
        subjects.work_all,
        subjects.webhooks_all,
        subjects.execution_run,
        subjects.execution_cancel,
        subjects.control_cancel_all,
        subjects.management_agent_get,
    )
    own_subscribe = (
        f"{subjects.actions_all} {ACTIONS_QUEUE}",
        subjects.control_cancel_all,
        SERVICE_DISCOVERY,
        # The parts of the attempts this instance runs (each on its own unguessable subject).
        subjects.execution_stream_all,
        _inbox(Role.ORCHESTRATOR),
        f"{EXECUTION_REPLY_INBOX}.>",
    )
    # `orchestrator run` serves the edge in the same process (on the orchestrator's connection),
    # so it holds the edge's grants too, but not the edge's inbox.
    edge_subscribe = tuple(s for s in edge.subscribe_allow if s != _inbox(Role.EDGE))
    return Permission(
        publish_allow=_union(own_publish, edge.publish_allow),
        subscribe_allow=_union(own_subscribe, edge_subscribe),
        responses=Responses(),
    )


def _execution(subjects: Subjects) -> Permission:
    # Everything execution code may touch, in its own account; the denies are redundant with the
    # account boundary and the allow lists, and keep a widened allow from reaching these.
    return Permission(
        publish_allow=(subjects.execution_stream_all, f"{EXECUTION_REPLY_INBOX}.>"),
        subscribe_allow=(
            f"{subjects.execution_run} {EXECUTION_QUEUE}",
            subjects.execution_cancel,
            # Micro service discovery within the execution account (`nats micro ls` there).
            SERVICE_DISCOVERY,
            _inbox(Role.EXECUTION),
        ),
        publish_deny=(
            "$JS.>",
            Subjects.KV_ALL,
            subjects.events_tree,
            subjects.live_tree,
            subjects.actions_all,
            subjects.work_all,
            subjects.control_cancel_all,
        ),
        subscribe_deny=("$JS.>", Subjects.KV_ALL, "_INBOX.>"),
        # Answers to micro discovery requests made inside the execution account.
        responses=Responses(),
    )


def _ops(subjects: Subjects, names: Resources) -> Permission:
    work = names.work_stream
    return Permission(
        publish_allow=(
            SERVICE_DISCOVERY,
            _js_api("INFO"),
            _js_api("STREAM", "NAMES"),
            _js_api("STREAM", "LIST"),
            _js_api("STREAM", "INFO", ">"),
            _js_api("STREAM", "MSG", "GET", ">"),
            _js_api("DIRECT", "GET", ">"),
            _js_api("CONSUMER", "NAMES", ">"),
            _js_api("CONSUMER", "LIST", ">"),
            _js_api("CONSUMER", "INFO", ">"),
            # Ephemeral consumers back `nats kv ls/watch/history` and `nats stream view`.
            _js_api("CONSUMER", "CREATE", ">"),
            _js_api("CONSUMER", "MSG", "NEXT", ">"),
            JS_ACK,
            JS_FLOW_CONTROL,
            Subjects.kv_api(names.agent_configs_bucket),
            subjects.actions_all,
        ),
        subscribe_allow=(_inbox(Role.OPS),),
        # A consumer or an ack on the work queue would take tasks away from the orchestrator.
        publish_deny=(
            _js_api("CONSUMER", "CREATE", work),
            _js_api("CONSUMER", "CREATE", work, ">"),
            _js_api("CONSUMER", "MSG", "NEXT", work, ">"),
            f"$JS.ACK.{work}.>",
        ),
    )


def covers(wide: str, narrow: str) -> bool:
    """True if every subject matched by pattern `narrow` is matched by pattern `wide`."""
    wide_tokens, narrow_tokens = wide.split("."), narrow.split(".")
    for i, token in enumerate(wide_tokens):
        if token == ">":
            return len(narrow_tokens) > i
        if i >= len(narrow_tokens) or narrow_tokens[i] == ">":
            return False
        if token != "*" and token != narrow_tokens[i]:
            return False
    return len(wide_tokens) == len(narrow_tokens)


def _union(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """All entries in order, without those another entry already covers."""
    merged = list(dict.fromkeys(s for group in groups for s in group))
    return tuple(
        s for s in merged if not any(o != s and " " not in o + s and covers(o, s) for o in merged)
    )


def permissions(subjects: Subjects, names: Resources | None = None) -> dict[Role, Permission]:
    """Each role's least-privilege grants within the deployment's subject space."""
    names = names or Resources()
    edge = _edge(subjects, names)
    return {
        Role.ORCHESTRATOR: _orchestrator(subjects, names, edge),
        Role.EDGE: edge,
        Role.EXECUTION: _execution(subjects),
        Role.OPS: _ops(subjects, names),
    }


@dataclass(frozen=True)
class Crossing:
    """One subject shared between accounts: `stream` (messages flow to the importer) or
    `service` (the importer publishes into the exporter's account)."""

    kind: str
    subject: str


@dataclass(frozen=True)
class Account:
    """A trust zone: its users (roles), whether it has JetStream, what it exports and imports."""

    name: str
    roles: tuple[Role, ...]
    jetstream: bool
    exports: tuple[Crossing, ...] = ()
    imports: tuple[tuple[str, Crossing], ...] = ()


def accounts(subjects: Subjects) -> tuple[Account, ...]:
    """The application's accounts; the execution account reaches only what is exported to it."""
    to_execution = (
        Crossing("stream", subjects.execution_run),
        Crossing("stream", subjects.execution_cancel),
        Crossing("service", subjects.execution_stream_all),
        Crossing("service", f"{EXECUTION_REPLY_INBOX}.>"),
    )
    return (
        Account(APP_ACCOUNT, (Role.ORCHESTRATOR, Role.EDGE, Role.OPS), True, exports=to_execution),
        Account(
            EXECUTION_ACCOUNT,
            (Role.EXECUTION,),
            False,
            imports=tuple((APP_ACCOUNT, crossing) for crossing in to_execution),
        ),
    )
