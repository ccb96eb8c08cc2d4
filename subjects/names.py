"""Subject names. Nothing else in the project formats a subject string.

Layout under the prefix (default `nooble4`):

| subject                                   | what travels                                   |
|-------------------------------------------|------------------------------------------------|
| `<p>.orchestrator.<action type>`          | DomainAction requests (micro endpoints)        |
| `<p>.events.<session_id>`                 | session events, stored in the event stream     |
| `<p>.live.<session_id>`                   | events republished by JetStream with sequence  |
| `<p>.work.chat.<tenant>.<user>`           | queued tasks (work-queue stream)               |
| `<p>.execution.chat.run`                  | orchestrator -> execution service requests     |
| `<p>.execution.chat.cancel`               | orchestrator -> execution service cancels      |
| `<p>.execution.stream.<task>.<n>.<nonce>` | execution service -> orchestrator: the parts   |
|                                           | of attempt n (nonce: only the request knows it)|
| `<p>.control.task.cancel.<task_id>`       | cancel fan-out between orchestrator instances  |
| `<p>.management.agent.get`                | agent config fallback lookups                  |
| `<p>.webhooks.<tenant>`                   | webhook deliveries waiting (work-queue stream) |

JetStream names a KV bucket's stream `KV_<bucket>` and stores key `k` under `$KV.<bucket>.<k>`;
`kv_stream`, `kv_subject` and `kv_api` build those names (no prefix: JetStream fixes them).
"""

from __future__ import annotations

import re
from enum import StrEnum

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class SubjectError(ValueError):
    """A subject or token that is not one of ours."""


class Role(StrEnum):
    """Who is on the bus; nats.conf grants each role only what it needs."""

    ORCHESTRATOR = "orchestrator"
    EDGE = "edge"
    EXECUTION = "execution"
    OPS = "ops"


def _token(value: str) -> str:
    if not _TOKEN.match(value):
        raise SubjectError(f"invalid subject token: {value!r}")
    return value


class Subjects:
    """The subject space of one deployment, under a configurable prefix."""

    SERVICE_NAME = "orchestrator"

    def __init__(self, prefix: str = "nooble4") -> None:
        if not all(_TOKEN.match(part) for part in prefix.split(".")):
            raise SubjectError(f"invalid subject prefix: {prefix!r}")
        self.prefix = prefix
        self._actions = f"{prefix}.orchestrator."
        self._events = f"{prefix}.events."
        self._live = f"{prefix}.live."

    def action(self, action_type: str) -> str:
        """Where a DomainAction is served: `nooble4.orchestrator.session.start`."""
        return self._actions + action_type

    def action_type_of(self, subject: str) -> str:
        if not subject.startswith(self._actions):
            raise SubjectError(f"not an action subject: {subject!r}")
        return subject[len(self._actions) :]

    @property
    def actions_all(self) -> str:
        return self._actions + ">"

    def session_events(self, session_id: str) -> str:
        return self._events + _token(session_id)

    @property
    def events_all(self) -> str:
        return self._events + "*"

    @property
    def events_tree(self) -> str:
        """`>` form, as JetStream republish mappings require."""
        return self._events + ">"

    @property
    def live_tree(self) -> str:
        return self._live + ">"

    def live(self, session_id: str) -> str:
        return self._live + _token(session_id)

    @property
    def live_all(self) -> str:
        return self._live + "*"

    def session_of_event_subject(self, subject: str) -> str:
        for base in (self._events, self._live):
            if subject.startswith(base):
                return subject[len(base) :]
        raise SubjectError(f"not an event subject: {subject!r}")

    def work(self, tenant_id: str, user_id: str) -> str:
        return f"{self.prefix}.work.chat.{_token(tenant_id)}.{_token(user_id)}"

    @property
    def work_all(self) -> str:
        return f"{self.prefix}.work.chat.*.*"

    @property
    def execution_run(self) -> str:
        return f"{self.prefix}.execution.chat.run"

    @property
    def execution_cancel(self) -> str:
        return f"{self.prefix}.execution.chat.cancel"

    def execution_stream(self, task_id: str, attempt: int, nonce: str) -> str:
        """Where one attempt's parts go; only the instance running the attempt listens."""
        return f"{self.prefix}.execution.stream.{_token(task_id)}.{int(attempt)}.{_token(nonce)}"

    def is_execution_stream(self, subject: str) -> bool:
        """Whether `subject` has the shape `execution_stream` builds (task, attempt, nonce)."""
        base = f"{self.prefix}.execution.stream."
        if not subject.startswith(base):
            return False
        tokens = subject[len(base) :].split(".")
        well_formed = all(_TOKEN.match(token) for token in tokens)
        return len(tokens) == 3 and well_formed and tokens[1].isdigit()

    @property
    def execution_stream_all(self) -> str:
        return f"{self.prefix}.execution.stream.>"

    def control_cancel(self, task_id: str) -> str:
        return f"{self.prefix}.control.task.cancel.{_token(task_id)}"

    @property
    def control_cancel_all(self) -> str:
        return f"{self.prefix}.control.task.cancel.*"

    def task_of_control_cancel(self, subject: str) -> str:
        return subject.rsplit(".", 1)[-1]

    def webhook(self, tenant_id: str) -> str:
        """Where a tenant's webhook deliveries wait (stream `WEBHOOKS`)."""
        return f"{self.prefix}.webhooks.{_token(tenant_id)}"

    @property
    def webhooks_all(self) -> str:
        return f"{self.prefix}.webhooks.*"

    @property
    def management_agent_get(self) -> str:
        return f"{self.prefix}.management.agent.get"

    KV_ALL = "$KV.>"
    """Every key of every KV bucket."""

    @staticmethod
    def kv_api(bucket: str) -> str:
        """The JetStream subjects under which a KV bucket's keys live."""
        return f"$KV.{bucket}.>"

    @staticmethod
    def kv_prefix(bucket: str) -> str:
        """What every key subject of a KV bucket starts with: `$KV.<bucket>.`."""
        return f"$KV.{bucket}."

    @staticmethod
    def kv_subject(bucket: str, key: str) -> str:
        """The subject a KV key (or key filter, wildcards allowed) is stored under."""
        return f"$KV.{bucket}.{key}"

    @staticmethod
    def kv_stream(bucket: str) -> str:
        """The name of the stream that holds a KV bucket."""
        return f"KV_{bucket}"
