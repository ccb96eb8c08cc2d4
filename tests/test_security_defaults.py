"""Safe defaults: `orchestrator run` is production, dev conveniences belong to `orchestrator dev`.

Findings of issue 12: `run` defaulted to dev (a dev token route answering anyone, tokens signed
with a public secret), a 1-character secret was accepted, no WebSocket Origin check, the dev
route answered any Host (DNS rebinding), and the page had no CSP/nosniff/frame-ancestors/
Referrer-Policy and kept its token in localStorage.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import jwt
import pytest
from tokens import claims

from orchestrator.service.edge.auth import mint_token
from orchestrator.service.edge.edge_server import Edge
from orchestrator.service.runtime.settings import (
    DEV_JWT_SECRET,
    Environment,
    InsecureSettings,
    OrchestratorSettings,
)
from orchestrator.subjects import Subjects

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orchestrator.service.runtime.cli"]
GOOD_SECRET = "s" * 32
ORIGIN = "https://chat.example.com"


def _clean_env(**env: str) -> dict[str, str]:
    """The environment of a fresh shell: no ORCH_* variable but the ones given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return {**clean, "ORCH_EMBEDDED_PORT": "0", "ORCH_EDGE_PORT": "0", **env}


def _run_refused(**env: str) -> str:
    """`orchestrator run` with `env`: it must exit non-zero by itself (it never starts serving, so
    the 60 s bound only catches a hang); its stderr."""
    out = subprocess.run(
        [*CLI, "run"], env=_clean_env(**env), capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return out.stderr


def test_run_is_production_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("ORCH_")]:
        monkeypatch.delenv(name)
    assert OrchestratorSettings().env is Environment.PROD
    assert "ORCH_ENV=prod" in (REPO / "k8s" / "Dockerfile").read_text()


def test_run_without_a_secret_or_origins_refuses_to_start_with_one_line_each() -> None:
    stderr = _run_refused()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert any("ORCH_JWT_SECRET must be set in prod" in line for line in lines), stderr
    assert any("ORCH_CORS_ORIGINS" in line for line in lines), stderr
    assert any("ORCH_WS_ORIGINS" in line for line in lines), stderr
    assert len(lines) == 3, stderr


@pytest.mark.parametrize(
    ("secret", "says"),
    [("x", "at least 32 bytes"), ("x" * 31, "at least 32 bytes"), (DEV_JWT_SECRET, "public")],
)
def test_run_refuses_a_short_or_public_secret(secret: str, says: str) -> None:
    stderr = _run_refused(ORCH_JWT_SECRET=secret, ORCH_CORS_ORIGINS=ORIGIN, ORCH_WS_ORIGINS=ORIGIN)
    assert says in stderr and "ORCH_JWT_SECRET" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_run_refuses_a_wildcard_origin() -> None:
    stderr = _run_refused(ORCH_JWT_SECRET=GOOD_SECRET, ORCH_CORS_ORIGINS="*", ORCH_WS_ORIGINS="*")
    assert "ORCH_CORS_ORIGINS may not be '*'" in stderr
    assert "ORCH_WS_ORIGINS may not be '*'" in stderr


def test_an_edge_built_in_prod_without_origins_is_refused(nc) -> None:
    bare = OrchestratorSettings(env="prod", jwt_secret=GOOD_SECRET)
    with pytest.raises(InsecureSettings, match="ORCH_CORS_ORIGINS"):
        Edge(bare, nc, Subjects())


def test_dev_without_a_secret_signs_with_a_random_per_process_secret() -> None:
    script = (
        "from orchestrator.service.runtime.settings import OrchestratorSettings as S;"
        "print(S(env='dev').hs_secret)"
    )
    env = _clean_env()
    secrets = [
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
            timeout=60,
        ).stdout.strip()
        for _ in range(2)
    ]  # fmt: skip
    assert secrets[0] != secrets[1]
    assert all(len(s) >= 32 and s != DEV_JWT_SECRET for s in secrets)


def test_token_command_needs_an_explicit_secret() -> None:
    out = subprocess.run(
        [*CLI, "token", "--tenant", "acme", "--user", "bob"], env=_clean_env(ORCH_ENV="dev"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0 and "ORCH_JWT_SECRET" in out.stderr
    assert not re.search(r"eyJ", out.stdout)


@pytest.fixture
async def make_edge(nc):
    started: list[Edge] = []

    async def make(dev_token_route: bool = False, **overrides) -> Edge:
        settings = OrchestratorSettings(edge_port=0, **overrides)
        edge = Edge(settings, nc, Subjects(), dev_token_route=dev_token_route)
        await edge.start()
        started.append(edge)
        return edge

    yield make
    for edge in started:
        await edge.stop()


async def test_a_run_edge_has_no_dev_token_route_even_in_dev(make_edge, http) -> None:
    edge = await make_edge(env="dev")
    async with http.get(f"{edge.url}/api/dev/token?tenant_id=victimcorp&user_id=admin") as resp:
        assert resp.status == 404


async def test_dev_token_route_refuses_a_rebound_host_name(make_edge, http) -> None:
    edge = await make_edge(dev_token_route=True, env="dev")
    url = f"{edge.url}/api/dev/token?tenant_id=t1&user_id=u1"
    async with http.get(url, headers={"Host": f"evil.example:{edge.port}"}) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "forbidden"
    for host in (f"localhost:{edge.port}", f"127.0.0.1:{edge.port}", "localhost"):
        async with http.get(url, headers={"Host": host}) as resp:
            assert resp.status == 200, host


async def test_tokens_signed_with_the_public_secret_are_refused(make_edge, http) -> None:
    edge = await make_edge(env="dev")
    forged = jwt.encode(claims(), DEV_JWT_SECRET, algorithm="HS256")
    async with http.get(
        f"{edge.url}/api/tasks/x1", headers={"Authorization": f"Bearer {forged}"}
    ) as resp:
        assert resp.status == 401


async def test_the_page_and_api_carry_strict_security_headers(make_edge, http) -> None:
    edge = await make_edge(env="dev")
    for path in ("/", "/static/app.js", "/health/live", "/api/tasks/x1"):
        async with http.get(f"{edge.url}{path}") as resp:
            csp = resp.headers.get("Content-Security-Policy", "")
            assert "default-src 'none'" in csp and "script-src 'self'" in csp, path
            assert "frame-ancestors 'none'" in csp, path
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert resp.headers.get("X-Content-Type-Options") == "nosniff", path
            assert resp.headers.get("Referrer-Policy") == "no-referrer", path
            assert resp.headers.get("X-Frame-Options") == "DENY", path


def test_the_page_keeps_its_token_out_of_local_storage() -> None:
    script = (REPO / "service" / "edge" / "static" / "app.js").read_text()
    assert not re.search(r"localStorage\.\w+\(TOKEN", script)
    assert re.search(r"sessionStorage\.setItem\(TOKEN", script)
    page = (REPO / "service" / "edge" / "static" / "index.html").read_text()
    assert "<script>" not in page and "style=" not in page  # nothing the CSP would block


async def test_websocket_from_a_foreign_origin_is_refused(edge, stack, http) -> None:
    from support.calls import call

    started = await call(stack.nc, "session.start", {"agent_id": "demo"})
    sid = started.data["session_id"]
    token = mint_token(edge.settings, "dev", "alice")
    url = f"{edge.url}/ws/chat/{sid}?token={token}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    for headers in ({"Origin": edge.settings.allowed_ws_origins[0]}, {}):
        ws = await http.ws_connect(url, headers=headers)
        ready = await ws.receive_json(timeout=10)
        assert ready["type"] == "session.ready", ready
        await ws.close()


def test_operations_doc_has_the_security_model_with_every_limit() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## Security model", 1)[1].split("\n## ", 1)[0]
    for name in (
        "ORCH_ENV", "ORCH_JWT_SECRET", "ORCH_CORS_ORIGINS", "ORCH_WS_ORIGINS",
        "ORCH_MAX_OPEN_SESSIONS_PER_USER", "ORCH_MAX_OPEN_SESSIONS_PER_TENANT",
        "ORCH_CLOSED_SESSION_RETENTION", "ORCH_SESSIONS_MAX_BYTES", "ORCH_TASKS_MAX_BYTES",
        "ORCH_AGENT_CONFIGS_MAX_BYTES", "ORCH_MAX_CONTENT_BYTES", "ORCH_EVENTS_MAX_PER_SESSION",
        "ORCH_EVENTS_MAX_BYTES", "ORCH_EDGE_HEADER_TIMEOUT", "ORCH_EDGE_MAX_HEADER_BYTES",
        "ORCH_EDGE_MAX_CONNECTIONS", "ORCH_EDGE_FD_RESERVE", "ORCH_WS_MAX_PER_USER",
        "ORCH_WS_SEND_QUEUE_BYTES", "ORCH_WS_IDLE_TIMEOUT", "ORCH_EMBEDDED_HOST",
        "ORCH_NATS_INBOX_PREFIX",
    ):  # fmt: skip
        assert f"`{name}`" in section, name
    for role in ("orchestrator", "edge", "execution", "ops"):
        assert f"| `{role}` |" in section, role
