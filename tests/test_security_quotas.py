"""Quotas (issue 12): no tenant can evict another's history; stored data is bounded.

Findings: `SESSION_EVENTS` discarded the oldest events of all tenants when full, so one user
sending large messages emptied another tenant's history; buckets had no byte limit and closed
sessions never left KV; a session with several large events could not be read (a page over
`max_payload`).
"""

from __future__ import annotations

import pytest
from nats.js.api import DiscardPolicy
from support.calls import call
from support.stack import start_stack, stop_stack

from orchestrator.service.runtime.settings import MiB

BIG = "x" * 60_000


@pytest.fixture
async def small_stack(nats_server):
    stack = await start_stack(
        nats_server,
        agent=None,
        events_max_per_session=100,
        events_max_bytes=2 * MiB,
        max_content_bytes=64 * 1024,
        max_message_bytes=256 * 1024,
        max_inflight_tasks_per_user=1000,
        user_rate=10_000.0,
    )
    try:
        yield stack
    finally:
        await stop_stack(stack)


async def _start(stack, tenant: str, user: str, agent_id: str = "demo") -> str:
    started = await call(
        stack.nc, "session.start", {"agent_id": agent_id}, tenant=tenant, user=user
    )
    assert started.error is None, started.data
    return started.data["session_id"]


async def test_one_tenant_filling_the_event_stream_evicts_no_one_elses_history(
    small_stack,
) -> None:
    stack = small_stack
    from support.calls import put_agent

    from orchestrator.codecs.agent_configs import Access, AgentConfig

    # A new agent id, not an overwrite of "demo": the instance already mirrors "demo" and would
    # serve its old (private) config until its watch delivers the change; an unknown id is read
    # from the bucket at once.
    await put_agent(stack.nc, "open", AgentConfig(tenant_id="dev", name="D", access=Access.PUBLIC))
    victim = await _start(stack, "victimcorp", "alice", agent_id="open")
    sent = await call(
        stack.nc, "chat.send", {"session_id": victim, "content": "keep me"},
        tenant="victimcorp", user="alice",
    )  # fmt: skip
    assert sent.error is None, sent.data
    attacker = await _start(stack, "dev", "mallory", agent_id="open")
    refused = 0
    for _ in range(120):  # 60 KB messages: far more than the 2 MiB stream holds
        got = await call(
            stack.nc, "chat.send", {"session_id": attacker, "content": BIG},
            tenant="dev", user="mallory",
        )  # fmt: skip
        if got.error is not None:
            assert got.code == "unavailable", got.data
            refused += 1
            if refused >= 3:
                break
    assert refused >= 3, "the full stream kept accepting events"
    page = await call(
        stack.nc, "session.events", {"session_id": victim}, tenant="victimcorp", user="alice"
    )
    assert page.data["recovered"] is True
    contents = [e["event"].get("content") for e in page.data["events"]]
    assert "keep me" in contents


async def test_a_session_over_its_event_maximum_loses_only_its_own_oldest(small_stack) -> None:
    stack = small_stack
    info = await stack.nc.jetstream().stream_info(stack.settings.events_stream)
    assert info.config.max_msgs_per_subject == 100
    assert info.config.discard == DiscardPolicy.NEW
    sid = await _start(stack, "dev", "alice")
    js = stack.nc.jetstream()
    for index in range(120):
        await js.publish(stack.subjects.session_events(sid), b'{"type":"x","i":%d}' % index)
    page = await call(stack.nc, "session.events", {"session_id": sid})
    assert page.data["recovered"] is False  # its own first events went


async def test_a_page_of_large_events_fits_in_one_reply(small_stack) -> None:
    stack = small_stack
    sid = await _start(stack, "dev", "alice")
    for _ in range(10):  # 10 x 60 KB > the 256 KiB max payload
        sent = await call(stack.nc, "chat.send", {"session_id": sid, "content": BIG})
        assert sent.error is None, sent.data
    seen, after, pages = 0, 0, 0
    for _ in range(20):
        page = await call(stack.nc, "session.events", {"session_id": sid, "after_seq": after})
        assert page.error is None, page.data
        pages += 1
        seen += sum(1 for e in page.data["events"] if e["event"].get("content") == BIG)
        after = page.data["last_seq"]
        if not page.data["more"]:
            break
    assert seen == 10 and pages > 1


async def test_message_content_over_the_cap_is_refused(small_stack) -> None:
    sid = await _start(small_stack, "dev", "alice")
    got = await call(small_stack.nc, "chat.send", {"session_id": sid, "content": "y" * 70_000})
    assert got.code == "payload_too_large", got.data


async def test_every_bucket_is_bounded_and_closed_sessions_expire(small_stack) -> None:
    settings, js = small_stack.settings, small_stack.nc.jetstream()
    for bucket, limit in (
        (settings.sessions_bucket, settings.sessions_max_bytes),
        (settings.tasks_bucket, settings.tasks_max_bytes),
        (settings.agent_configs_bucket, settings.agent_configs_max_bytes),
    ):
        config = (await js.stream_info(f"KV_{bucket}")).config
        assert config.max_bytes == limit > 0, bucket
    sessions = (await js.stream_info(f"KV_{settings.sessions_bucket}")).config
    lifetime = max(settings.session_ttl, settings.session_idle_timeout)
    assert sessions.max_age == lifetime + settings.closed_session_retention


async def test_open_sessions_are_capped_per_user_and_per_tenant(nats_server) -> None:
    stack = await start_stack(
        nats_server, agent=None, max_open_sessions_per_user=3, max_open_sessions_per_tenant=5
    )
    try:
        alice = [await _start(stack, "dev", "alice") for _ in range(3)]
        refused = await call(stack.nc, "session.start", {"agent_id": "demo"})
        assert refused.code == "conflict" and refused.error["details"]["scope"] == "user"
        closed = await call(stack.nc, "session.close", {"session_id": alice[0]})
        assert closed.error is None, closed.data
        await _start(stack, "dev", "alice")  # a closed session frees its slot
        bob = [await _start(stack, "dev", "bob") for _ in range(2)]
        full = await call(stack.nc, "session.start", {"agent_id": "demo"}, user="carol")
        assert full.code == "conflict" and full.error["details"]["scope"] == "tenant"
        assert len(bob) == 2
        slots = (await stack.nc.jetstream().stream_info("KV_session_slots")).state.messages
        assert slots == 5
    finally:
        await stop_stack(stack)
