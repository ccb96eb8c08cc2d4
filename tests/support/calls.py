"""Calls over the bus: a DomainAction sent as any NATS client would, its decoded reply, the
Python client of one caller, and the waits for a service or a stored agent to be there."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats
from conftest import wait_until
from nats.aio.client import Client

from orchestrator.codecs.agent_configs import AgentConfig
from orchestrator.codecs.wire import encode

if TYPE_CHECKING:
    from support.stack import Stack


@dataclass
class Reply:
    """A decoded reply: `data` is the JSON body, `error` its error body if it failed."""

    data: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def error(self) -> dict[str, Any] | None:
        return self.data.get("error") if "Nats-Service-Error-Code" in self.headers else None

    @property
    def code(self) -> str | None:
        return self.error["code"] if self.error else None


async def call(
    nc: Client,
    action_type: str,
    data: dict[str, Any] | bytes,
    *,
    tenant: str = "dev",
    user: str = "alice",
    prefix: str = "nooble4",
    timeout: float = 10.0,
    **envelope: Any,
) -> Reply:
    """Send one DomainAction as any NATS client would (`nats req`)."""
    body = (
        data
        if isinstance(data, bytes)
        else json.dumps({"tenant_id": tenant, "user_id": user, "data": data, **envelope}).encode()
    )
    msg = await nc.request(f"{prefix}.orchestrator.{action_type}", body, timeout=timeout)
    return Reply(json.loads(msg.data) if msg.data else {}, dict(msg.headers or {}))


def client_of(stack: Stack, tenant: str = "dev", user: str = "alice", **kw: Any):
    """The Python client `orchestrator.client` for one caller, on the stack's connection."""
    from orchestrator.client import OrchestratorClient

    return OrchestratorClient(
        stack.nc, tenant_id=tenant, user_id=user, settings=stack.settings, **kw
    )


async def put_agent(nc: Client, agent_id: str, config: AgentConfig, bucket: str = "agent_configs"):
    kv = await nc.jetstream().key_value(bucket)
    await kv.put(agent_id, encode(config))


async def connect_client(*urls: str) -> Client:
    """A test client that tries `urls` in order and reconnects forever."""
    return await nats.connect(
        list(urls), max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2,
        dont_randomize=True,
    )  # fmt: skip


async def wait_for_service(
    nc: Client, count: int = 1, timeout: float = 20.0, name: str = "orchestrator"
) -> None:
    """Until `count` instances of the micro service `name` answer PING (`execution-<kind>` for
    an execution service)."""

    async def answered() -> bool:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
        seen = set()
        try:
            while True:
                msg = await sub.next_msg(timeout=0.3)
                if msg.data:  # an empty message is the server's "no responders" status
                    seen.add(json.loads(msg.data)["id"])
        except nats.errors.TimeoutError:
            pass
        await sub.unsubscribe()
        return len(seen) >= count

    await wait_until(answered, timeout, 0.2, f"{count} {name} instance(s) to answer PING")


async def seed_demo_agent(nc: Client, timeout: float = 20.0) -> None:
    """Store the `demo` agent once an orchestrator has created the bucket (JetStream may lag)."""

    async def stored() -> bool:
        try:
            await put_agent(nc, "demo", AgentConfig(tenant_id="dev", name="Demo"))
        except (nats.errors.Error, nats.js.errors.APIError):
            return False
        return True

    await wait_until(stored, timeout, 0.2, "the demo agent to be stored")
