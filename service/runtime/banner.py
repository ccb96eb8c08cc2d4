"""What `orchestrator dev` prints once everything is up: URLs, a token and lines to paste.

Every command in it works as printed (a test runs the curl lines against the dev process): a
newcomer can start a session and chat with the demo agent in the first minute, over HTTP with
only `curl`, or over NATS with the `nats` CLI.
"""

from __future__ import annotations

import json
import shlex

from orchestrator.service.edge.auth import mint_token
from orchestrator.service.runtime.runner import DEMO_AGENT, DEMO_TENANT
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.subjects import Subjects

DEMO_USER = "alice"
# Reads one field of the JSON reply on stdin: python3 is on every machine that runs this project.
_FIELD = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"{}\"])'"


def _json(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))


def _curl(method: str, url: str, body: dict | None = None) -> str:
    """One curl line; the URL and header in double quotes so that $TOKEN, $SID, $TASK expand."""
    line = f'curl -s -X {method} "{url}" -H "Authorization: Bearer $TOKEN"'
    if body is not None:
        line += f" -H 'Content-Type: application/json' -d {shlex.quote(_json(body))}"
    return line


def dev_banner(
    settings: OrchestratorSettings, nats_url: str, edge_url: str | None, nats_login: str = ""
) -> str:
    """The banner text for a dev process whose NATS is `nats_url` and edge (if any) `edge_url`;
    `nats_login`: the `nats` CLI options that log in (the embedded server's `ops` user)."""
    token = mint_token(settings, DEMO_TENANT, DEMO_USER)
    subjects = Subjects(settings.subject_prefix)
    # The envelope as a trusted bus client sends it; the service fills in the ids.
    start = {"tenant_id": DEMO_TENANT, "user_id": DEMO_USER, "data": {"agent_id": DEMO_AGENT}}
    lines = [
        "",
        "Nooble4 orchestrator (dev) is up.",
        f"  Chat page: {edge_url + '/' if edge_url else '(edge disabled: --no-edge)'}",
        f"  NATS:      {nats_url}",
        f"  Token:     {token}",
        f"             (tenant {DEMO_TENANT}, user {DEMO_USER}, agent {DEMO_AGENT}; "
        f"valid {settings.jwt_token_ttl:g}s; `orchestrator token` makes more)",
    ]
    if edge_url:
        api = f"{edge_url}/api"
        lines += [
            "",
            "Chat over HTTP (paste these lines into a shell, one after the other):",
            f"  TOKEN={token}",
            f"  SID=$({_curl('POST', f'{api}/chat/start', {'agent_id': DEMO_AGENT})}"
            f" | {_FIELD.format('session_id')})",
            f"  TASK=$({_curl('POST', f'{api}/chat/sessions/$SID/messages', {'content': 'Hello'})}"
            f" | {_FIELD.format('task_id')})",
            f"  {_curl('GET', f'{api}/tasks/$TASK')}",
            f"  {_curl('GET', f'{api}/chat/sessions/$SID/events')}",
        ]
    lines += [
        "",
        "Or on the bus, with the nats CLI (https://github.com/nats-io/natscli):",
        f"  nats --server {nats_url} {nats_login}req {subjects.action('session.start')} "
        f"{shlex.quote(_json(start))}",
        "",
        "Ctrl-C stops everything, the embedded nats-server included.",
        "",
    ]
    return "\n".join(lines)
