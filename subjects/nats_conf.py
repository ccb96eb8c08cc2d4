"""nats-server configuration rendered from `permissions.py`: nats.conf (and its copy in
k8s/nats/) and the embedded server's file. One source, so a grant cannot differ between them.

`python -m orchestrator.subjects.nats_conf > nats.conf` rewrites the committed file (then
`cp nats.conf k8s/nats/nats.conf`); a test fails while either differs from the rendering.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from orchestrator.subjects.names import Role, Subjects
from orchestrator.subjects.permissions import (
    Account,
    Permission,
    Resources,
    accounts,
    permissions,
)

# Environment variables the deployed server reads each role's password from.
PASSWORD_VARS = {
    Role.ORCHESTRATOR: "ORCH_NATS_PASSWORD",
    Role.EDGE: "EDGE_NATS_PASSWORD",
    Role.EXECUTION: "EXECUTION_NATS_PASSWORD",
    Role.OPS: "OPS_NATS_PASSWORD",
}
SYS_PASSWORD_VAR = "SYS_NATS_PASSWORD"

_ROLE_NOTES = {
    Role.ORCHESTRATOR: (
        "The orchestrator service (`orchestrator run`): owns the KV buckets and streams, serves",
        "the DomainAction endpoints in queue group `q`, sends work to execution services (on a",
        "second connection whose inbox prefix is the execution-reply inbox), and runs the edge",
        "in-process (so it also holds the edge's grants).",
    ),
    Role.EDGE: ("A stand-alone edge: sends actions, receives live events, replays the events.",),
    Role.OPS: (
        "Operators with the `nats` CLI (`--inbox-prefix _INBOX_ops`): micro discovery, stream,",
        "consumer and KV inspection, `nats kv put agent_configs ...`, `nats req` of an action.",
    ),
    Role.EXECUTION: (
        "Execution services (e.g. `orchestrator agent`), possibly third-party code: take run",
        "requests in queue group `execution`, hear cancels, stream parts to the subject a request",
        "names, reply to the orchestrator's execution-reply inbox. No JetStream, KV or events.",
    ),
}
_ACCOUNT_NOTES = {
    "APP": "The orchestrator, edge and operators, with JetStream (buckets, events, work queue).",
    "EXECUTION": "Execution services: only what APP exports to them, and no JetStream.",
}


def _quote(subject: str) -> str:
    return json.dumps(subject)


def _list(name: str, items: tuple[str, ...], indent: str) -> list[str]:
    if not items:
        return []
    return [f"{indent}{name}: [", *(f"{indent}  {_quote(s)}" for s in items), f"{indent}]"]


def _permission(grants: Permission, indent: str) -> list[str]:
    lines = [f"{indent}permissions: {{"]
    for side, allow, deny in (
        ("publish", grants.publish_allow, grants.publish_deny),
        ("subscribe", grants.subscribe_allow, grants.subscribe_deny),
    ):
        lines.append(f"{indent}  {side}: {{")
        lines += _list("allow", allow, indent + "    ")
        lines += _list("deny", deny, indent + "    ")
        lines.append(f"{indent}  }}")
    if grants.responses is not None:
        limit, expires = grants.responses.max, _quote(f"{int(grants.responses.expires)}s")
        lines.append(f"{indent}  allow_responses: {{ max: {limit}, expires: {expires} }}")
    lines.append(f"{indent}}}")
    return lines


def _account(account: Account, grants: dict[Role, Permission], password: Callable) -> list[str]:
    lines = [f"  # {_ACCOUNT_NOTES[account.name]}", f"  {account.name} {{"]
    if account.jetstream:
        lines.append("    jetstream: enabled")
    lines.append("    users: [")
    for role in account.roles:
        lines += [f"      # {note}" for note in _ROLE_NOTES[role]]
        lines += [
            "      {",
            f"        user: {role.value}",
            f"        password: {password(role)}",
            *_permission(grants[role], "        "),
            "      }",
        ]
    lines.append("    ]")
    if account.exports:
        lines.append("    exports: [")
        lines += [f"      {{ {c.kind}: {_quote(c.subject)} }}" for c in account.exports]
        lines.append("    ]")
    if account.imports:
        lines.append("    imports: [")
        lines += [
            f"      {{ {c.kind}: {{ account: {source}, subject: {_quote(c.subject)} }} }}"
            for source, c in account.imports
        ]
        lines.append("    ]")
    lines.append("  }")
    return lines


def render_accounts(
    subjects: Subjects,
    password: Callable[[Role], str],
    sys_password: str,
    names: Resources | None = None,
) -> str:
    """The `accounts { ... }` block and `system_account`; `password(role)` as written."""
    grants = permissions(subjects, names)
    lines = ["accounts {"]
    for account in accounts(subjects):
        lines += _account(account, grants, password)
    lines += [
        "  # The system account: `nats --user sys server report jetstream`, `server list`.",
        "  SYS {",
        f"    users: [ {{ user: sys, password: {sys_password} }} ]",
        "  }",
        "}",
        "system_account: SYS",
    ]
    return "\n".join(lines) + "\n"


DEPLOYED_HEADER = """\
# nats-server configuration for production: one node as written; k8s/nats/cluster.conf includes
# this file unchanged and adds the 3-node cluster (routes, per-pod server_name).
#
# GENERATED from subjects/permissions.py: `python -m orchestrator.subjects.nats_conf > nats.conf`
# and `cp nats.conf k8s/nats/nats.conf`; tests/test_nats_permissions.py fails if they differ and
# proves the grants against a real nats-server.
#
# Passwords come from the environment (`$NAME`, unquoted). nats-server parses each value as a
# config token (`1234` becomes a number, `64k` a size), so start it with a letter and use only
# letters and digits: `echo p$(openssl rand -hex 24)`. The server refuses to start when one is
# unset.

server_name: nooble4-nats-0

# Clients (orchestrator, edge, execution services, the `nats` CLI).
listen: 0.0.0.0:4222
# /healthz, /varz, /jsz for probes and scraping; never expose it outside the cluster.
http: 0.0.0.0:8222

# Matches ORCH_MAX_MESSAGE_BYTES (1 MiB): the largest action, event or KV value.
max_payload: 1MB
max_pending: 64MB
max_connections: 65536
ping_interval: "20s"
ping_max: 3
write_deadline: "10s"

# On SIGTERM-like lame duck (`nats-server --signal ldm`), move clients away over 30s.
lame_duck_duration: "30s"
lame_duck_grace_period: "10s"

jetstream {
  store_dir: "/data/jetstream"
  # Session events and chat tasks are file-backed; memory holds only caches and indexes.
  max_memory_store: 1GB
  # Keep below the volume size (10Gi PVC in k8s) so the disk never fills before the limit.
  max_file_store: 8GB
}

"""


def render_deployed(subjects: Subjects | None = None) -> str:
    """nats.conf as committed: passwords from `$<ROLE>_NATS_PASSWORD` variables."""
    subjects = subjects or Subjects()
    block = render_accounts(
        subjects, lambda role: f"${PASSWORD_VARS[role]}", f"${SYS_PASSWORD_VAR}"
    )
    return DEPLOYED_HEADER + block


if __name__ == "__main__":
    sys.stdout.write(render_deployed())
