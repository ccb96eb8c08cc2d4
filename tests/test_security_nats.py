"""NATS trust zones (issue 12): the findings against the bus, each refused by a real nats-server.

- every role read every reply (`_INBOX.>`): KV records, task records, work deliveries;
- execution services wrote any session's events, and a forged `Nats-Msg-Id` dropped a real close;
- an overheard work delivery could be `+TERM`ed;
- the embedded nats-server had no authentication;
- an execution reply must reach the orchestrator from any cluster node (grant, not
  per-server `allow_responses`).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nats
import pytest
from conftest import wait_until
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from support.nats_configs import Login

from orchestrator.service.runtime.embedded import (
    CREDENTIALS_FILE,
    EmbeddedCredentials,
    embedded_server,
)
from orchestrator.service.runtime.nats_connection import connect
from orchestrator.service.runtime.nats_server import NatsServer
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.subjects import Role, Subjects
from orchestrator.subjects.nats_conf import PASSWORD_VARS
from orchestrator.subjects.permissions import EXECUTION_QUEUE, EXECUTION_REPLY_INBOX, inbox_prefix

SUBJECTS = Subjects()
OTHER_INBOXES = ("_INBOX.>", ">", *(f"{inbox_prefix(role)}.>" for role in Role))


async def test_no_role_can_subscribe_to_another_roles_replies(orchestrator: Login, login) -> None:
    for role in (Role.EDGE, Role.EXECUTION, Role.OPS):
        other: Login = await login(role)
        for subject in OTHER_INBOXES:
            if subject == f"{inbox_prefix(role)}.>":
                continue
            await other.subscribe_denied(subject)
        await other.subscribe_denied(f"{EXECUTION_REPLY_INBOX}.>")
    # The orchestrator's own replies still work (KV reads are replies to its inbox).
    sessions = await orchestrator.nc.jetstream(timeout=5).key_value("sessions")
    await sessions.put("t1.u1.s1", b"{}")
    assert (await sessions.get("t1.u1.s1")).value == b"{}"
    await orchestrator.no_errors()


async def test_execution_cannot_write_session_events_nor_drop_a_close(
    orchestrator: Login, login
) -> None:
    execution: Login = await login(Role.EXECUTION)
    close_id = {"Nats-Msg-Id": "s1.closed"}
    forged = b'{"type":"session.closed"}'
    await execution.nc.publish(SUBJECTS.session_events("s1"), forged, headers=close_id)
    await execution._wait_error(f'publish to "{SUBJECTS.session_events("s1")}"')
    for subject in (SUBJECTS.live("s1"), "$JS.API.STREAM.MSG.GET.SESSION_EVENTS"):
        await execution.publish_denied(subject)
    # The real close is stored, not dropped as a duplicate of a forged one.
    js = orchestrator.nc.jetstream(timeout=5)
    ack = await js.publish(SUBJECTS.session_events("s1"), b"real close", headers=close_id)
    assert not ack.duplicate and ack.seq == 1


async def test_execution_can_neither_ack_work_nor_reach_jetstream_or_kv(
    orchestrator: Login, login
) -> None:
    execution: Login = await login(Role.EXECUTION)
    for subject in (
        "$JS.ACK.CHAT_WORK.worker.1.1.1.1700000000000000000.0",
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.SESSION_EVENTS",
        "$JS.API.CONSUMER.MSG.NEXT.CHAT_WORK.worker",
        "$KV.agent_configs.demo",
        SUBJECTS.work("t1", "u1"),
        SUBJECTS.control_cancel("t1"),
    ):
        await execution.publish_denied(subject)
    await execution.subscribe_denied(SUBJECTS.work_all)
    await execution.subscribe_denied("$JS.>")


async def test_execution_reply_reaches_the_orchestrator_from_another_cluster_node(
    cluster: list[NatsServer],
) -> None:
    def user(role: Role, server: NatsServer, inbox: str | None = None):
        return nats.connect(
            server.url, user=role.value, password=os.environ[PASSWORD_VARS[role]],
            inbox_prefix=inbox or inbox_prefix(role), connect_timeout=5,
        )  # fmt: skip

    sender = await user(Role.ORCHESTRATOR, cluster[0], EXECUTION_REPLY_INBOX)
    taker = await user(Role.EXECUTION, cluster[1])
    # A different connection on a third node answers: as an agent that reconnected elsewhere.
    answerer = await user(Role.EXECUTION, cluster[2])
    try:

        async def take(msg) -> None:
            await answerer.publish(msg.reply, b"answered elsewhere")

        await taker.subscribe(SUBJECTS.execution_run, queue=EXECUTION_QUEUE, cb=take)
        await taker.flush()
        replies: list[bytes] = []

        async def answered() -> bool:
            # Until the subscription's interest has reached node 0 (no responders before that).
            try:
                replies.append((await sender.request(SUBJECTS.execution_run, b"{}", 2)).data)
            except NatsError:
                return False
            return True

        await wait_until(answered, timeout=20, interval=0.1, message="a run request answered")
        assert replies == [b"answered elsewhere"]
    finally:
        for client in (sender, taker, answerer):
            await client.close()


@pytest.fixture
def embedded(tmp_path: Path):
    settings = OrchestratorSettings(embedded_port=0, embedded_data_dir=tmp_path / "data")
    credentials = EmbeddedCredentials.generate()
    server = embedded_server(settings, credentials).start()
    credentials.write(server.store_dir / CREDENTIALS_FILE, server.url)
    try:
        yield settings, credentials, server
    finally:
        server.kill()


async def test_embedded_server_refuses_strangers_and_runs_the_trust_zones(embedded) -> None:
    settings, credentials, server = embedded
    with pytest.raises((NatsError, NoServersError)):
        await nats.connect(server.url, connect_timeout=2, allow_reconnect=False)
    with pytest.raises((NatsError, NoServersError)):
        await nats.connect(
            server.url, user="ops", password="p-guessed", connect_timeout=2, allow_reconnect=False
        )
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    ops = await nats.connect(
        server.url, user="ops", password=credentials.passwords[Role.OPS], error_cb=on_error,
        inbox_prefix=inbox_prefix(Role.OPS), connect_timeout=2, allow_reconnect=False,
    )  # fmt: skip
    try:
        await ops.publish("$KV.sessions.t1.u1.s1", b"{}")
        await ops.subscribe(">")
        await ops.flush()
        # The server sends each -ERR before the flush's PONG, but nats-py hands errors to
        # `error_cb` in tasks of their own: wait for both to be seen.
        await wait_until(
            lambda: any('publish to "$kv.sessions' in e for e in errors)
            and any('subscription to ">"' in e for e in errors),
            timeout=10, message=lambda: f"both permission violations, got {errors}",
        )  # fmt: skip
    finally:
        await ops.close()
    service = await connect(
        settings, [server.url], "t", role=Role.ORCHESTRATOR,
        login=credentials.login(Role.ORCHESTRATOR),
    )  # fmt: skip
    try:
        await service.jetstream(timeout=5).account_info()
    finally:
        await service.close()
    saved = server.store_dir / CREDENTIALS_FILE
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert (
        json.loads(saved.read_text())["users"]["ops"]["password"] == credentials.passwords[Role.OPS]
    )
    assert stat.S_IMODE((server.store_dir / "nats-server.conf").stat().st_mode) == 0o600


def test_embedded_server_listens_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for host in ("0.0.0.0", "10.0.0.5", "example.com"):
        with pytest.raises(ValueError, match="loopback"):
            OrchestratorSettings(embedded_host=host)
    assert OrchestratorSettings(embedded_host="::1").embedded_host == "::1"
