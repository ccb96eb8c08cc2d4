"""How long an agent-config change takes to reach a running orchestrator (its KV-watch cache).

The change is observed from outside, by behaviour: the agent is flipped between tenant-only and
public, and a caller of another tenant retries `session.start` until the answer flips too
(forbidden <-> allowed). One request takes ~1 ms here, which bounds the resolution.
"""

from __future__ import annotations

import time

import msgspec
from context import Bench
from nats.errors import TimeoutError as NatsTimeout
from orchestrator_procs import Orchestrator
from systems import TENANT, system_settings

from orchestrator.codecs.agent_configs import Access, AgentConfig

AGENT = "bench-propagation"
_OUTSIDER_REQUEST = msgspec.json.encode(
    {"tenant_id": "other-tenant", "user_id": "outsider", "data": {"agent_id": AGENT}}
)
FLIPS = 20
DEADLINE = 10.0  # per flip: a change not seen by then is reported as missed


async def _outsider_allowed(bench: Bench, subject: str) -> bool:
    """Whether `session.start` of the other tenant's caller succeeds (no micro error header)."""
    reply = await bench.nc.request(subject, _OUTSIDER_REQUEST, timeout=5)
    return not (reply.headers and reply.headers.get("Nats-Service-Error-Code"))


async def measure(bench: Bench, orch: Orchestrator) -> dict:
    """Milliseconds from each KV put until the running instance acts on it."""
    settings = system_settings("orchestrator", bench.url)
    kv = await bench.js.key_value(settings.agent_configs_bucket)
    subject = orch.chat.subjects.action("session.start")
    seen_ms: list[float] = []
    missed = 0
    for flip in range(FLIPS + 1):
        public = flip % 2 == 1
        access = Access.PUBLIC if public else Access.TENANT
        await kv.put(AGENT, msgspec.json.encode(AgentConfig(tenant_id=TENANT, access=access)))
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < DEADLINE:
            try:
                if await _outsider_allowed(bench, subject) is public:
                    break
            except NatsTimeout:
                continue
        else:
            missed += 1
            continue
        if flip:  # the first put only sets the starting state
            seen_ms.append((time.perf_counter() - t0) * 1000)
    await kv.delete(AGENT)
    seen_ms.sort()
    return {
        "flips": FLIPS,
        "missed": missed,
        "p50_ms": round(seen_ms[len(seen_ms) // 2], 2) if seen_ms else None,
        "max_ms": round(seen_ms[-1], 2) if seen_ms else None,
    }
