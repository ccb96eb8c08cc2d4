"""`nats micro ls/info/stats orchestrator` work: replies carry what the official schemas require.

The `nats` CLI validates PING/INFO/STATS replies against nats.io's micro v1 JSON schemas; the
required fields and patterns below are those of the schemas.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

from support.calls import call

from orchestrator.codecs.actions import ACTIONS

NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


async def ask(nc, verb: str) -> dict:
    msg = await nc.request(f"$SRV.{verb}.orchestrator", b"", timeout=10)
    return json.loads(msg.data)


def check_identity(reply: dict, kind: str) -> None:
    assert reply["type"] == f"io.nats.micro.v1.{kind}_response"
    assert reply["name"] == "orchestrator" and NAME.match(reply["name"])
    assert isinstance(reply["id"], str) and reply["id"]
    assert SEMVER.match(reply["version"])
    metadata = reply.get("metadata")
    assert metadata is None or all(isinstance(v, str) for v in metadata.values())


async def test_ping_reply_matches_the_micro_schema(stack):
    check_identity(await ask(stack.nc, "PING"), "ping")


async def test_info_reply_lists_one_endpoint_per_action_with_a_description(stack):
    info = await ask(stack.nc, "INFO")
    check_identity(info, "info")
    assert isinstance(info["description"], str) and info["description"]
    subjects = {ep["subject"]: ep for ep in info["endpoints"]}
    assert set(subjects) == {f"nooble4.orchestrator.{t}" for t in ACTIONS}
    for ep in info["endpoints"]:
        assert NAME.match(ep["name"])
        assert ep["queue_group"]
        assert ep["metadata"] is None or all(isinstance(v, str) for v in ep["metadata"].values())
    assert subjects["nooble4.orchestrator.session.start"]["name"] == "session-start"


async def test_stats_reply_counts_real_requests_and_errors(stack):
    await call(stack.nc, "session.start", {"agent_id": "demo"})
    await call(stack.nc, "session.start", {"agent_id": "missing"})
    await call(stack.nc, "session.get", b"not json")
    stats = await ask(stack.nc, "STATS")
    check_identity(stats, "stats")
    datetime.fromisoformat(stats["started"].replace("Z", "+00:00"))
    by_name = {ep["name"]: ep for ep in stats["endpoints"]}
    for ep in stats["endpoints"]:
        for field in ("num_requests", "num_errors", "processing_time", "average_processing_time"):
            assert isinstance(ep[field], int)
        assert isinstance(ep["last_error"], str)
        assert ep.get("data") is None or isinstance(ep["data"], dict)
    start = by_name["session-start"]
    assert (start["num_requests"], start["num_errors"]) == (2, 1)
    assert "not_found" in start["last_error"]
    assert start["processing_time"] > 0
    assert (by_name["session-get"]["num_requests"], by_name["session-get"]["num_errors"]) == (1, 1)
