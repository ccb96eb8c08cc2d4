"""The `orchestrator` command as a newcomer runs it: dev, run (embedded), token, bad settings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import jwt
import nats
import pytest
from cli_run import CLI, PROD_ENV, embedded_ops, port_open, spawn, stop, wait_for_text
from conftest import wait_until
from support.calls import call, wait_for_service

from orchestrator.service.runtime.nats_server import free_port


@pytest.fixture
def embedded_env(tmp_path):
    return {
        "ORCH_EMBEDDED_PORT": str(free_port()),
        "ORCH_EMBEDDED_DATA_DIR": str(tmp_path / "data"),
        "ORCH_EDGE_PORT": str(free_port()),
        "ORCH_SHUTDOWN_GRACE": "2",
    }


async def test_dev_runs_everything_end_to_end_and_sigterm_stops_the_embedded_server(
    tmp_path, embedded_env
):
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        proc = spawn(["dev"], embedded_env, log)
        try:
            match = await wait_for_text(log_path, r"NATS:\s+(nats://\S+)")
            await wait_for_text(log_path, r"Chat page:\s+http://\S+")
            nc = await embedded_ops(tmp_path / "data", match.group(1))
            started = await call(nc, "session.start", {"agent_id": "demo"})
            assert started.error is None, started.data
            sid = started.data["session_id"]
            sent = await call(nc, "chat.send", {"session_id": sid, "content": "hi"})
            task_id = sent.data["task_id"]

            async def completed() -> bool:
                task = await call(nc, "task.get", {"task_id": task_id})
                return task.data["status"] == "completed"

            await wait_until(completed, timeout=15, message="the demo agent's answer")
            await nc.close()
            port = int(embedded_env["ORCH_EMBEDDED_PORT"])
            assert port_open(port)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 20) == 0
            assert not port_open(port), "the embedded nats-server outlived the program"
        finally:
            if proc.poll() is None:
                proc.kill()


async def test_run_without_nats_url_keeps_sessions_across_a_kill_9(tmp_path, embedded_env):
    env = {**embedded_env, "ORCH_EDGE_PORT": "0"}
    url = f"nats://127.0.0.1:{env['ORCH_EMBEDDED_PORT']}"
    with open(tmp_path / "run.log", "wb") as log:
        first = spawn(["run", "--role", "service"], env, log)
        try:
            await wait_until(lambda: port_open(int(env["ORCH_EMBEDDED_PORT"])), timeout=20)
            nc = await embedded_ops(tmp_path / "data", url)
            await wait_for_service(nc)
            kv = await nc.jetstream().key_value("agent_configs")
            await kv.put("demo", b'{"tenant_id":"dev"}')
            sid = (await call(nc, "session.start", {"agent_id": "demo"})).data["session_id"]
            await nc.close()
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        # The embedded server follows its parent down and frees the port and the store.
        await wait_until(lambda: not port_open(int(env["ORCH_EMBEDDED_PORT"])), timeout=15)
        # Each start generates new credentials: the old ones must not be read by mistake.
        (tmp_path / "data" / "credentials.json").unlink()
        second = spawn(["run", "--role", "service"], env, log)
        try:
            await wait_until(lambda: port_open(int(env["ORCH_EMBEDDED_PORT"])), timeout=20)
            nc = await embedded_ops(tmp_path / "data", url)
            await wait_for_service(nc)
            got = await call(nc, "session.get", {"session_id": sid})
            assert got.data["status"] == "open"
            await nc.close()
        finally:
            await stop(second)


def test_token_prints_a_jwt_for_the_tenant_and_user():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    out = subprocess.run(
        [*CLI, "token", "--tenant", "acme", "--user", "bob"], env={**clean, **PROD_ENV},
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    token = out.stdout.strip()
    secret = PROD_ENV["ORCH_JWT_SECRET"]
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience="nooble4")
    assert claims["sub"] == "bob"
    assert claims.get("tenant_id", claims.get("tid")) == "acme"


def test_invalid_settings_fail_at_start_naming_the_variable():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    out = subprocess.run(
        [*CLI, "run"], env={**clean, "ORCH_EXECUTION_TIMEOUT": "soon"}, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert "ORCH_EXECUTION_TIMEOUT" in out.stderr


async def test_start_up_waits_for_nats_and_says_what_it_waits_for(tmp_path):
    from orchestrator.service.runtime.nats_server import NatsServer

    port = free_port()
    log_path = tmp_path / "wait.log"
    env = {"ORCH_NATS_URL": f"nats://127.0.0.1:{port}", "ORCH_EDGE_PORT": "0"}
    with open(log_path, "wb") as log:
        proc = spawn(["run", "--role", "service"], env, log)
        server = None
        try:
            await wait_for_text(log_path, rf"waiting for NATS at .*{port}")
            assert proc.poll() is None
            server = NatsServer(tmp_path / "late", port=port).start()
            nc = await nats.connect(server.url)
            await wait_for_service(nc)
            await nc.close()
        finally:
            await stop(proc)
            if server:
                server.kill()
