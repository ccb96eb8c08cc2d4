"""How long an agent-config change takes to reach a running orchestrator (its KV-watch cache).

The change is observed from outside, by behaviour: the agent is flipped between tenant-only and
public, and a caller of another tenant retries `session.start` until the answer flips too
(forbidden <-> allowed). One request takes ~1 ms here, which bounds the resolution.
"""

from __future__ import annotations

import time

import msgspec

from orchestrator.client import OrchestratorClient
from orchestrator.codecs.agent_configs import Access, AgentConfig
from orchestrator.codecs.errors import ActionTimeout, Forbidden

from .driver import Bench
from .figures import Propagation
from .systems import TENANT, system_settings

AGENT = "bench-propagation"
DEADLINE = 10.0  # per flip: a change not seen by then is reported as missed


async def _outsider_allowed(outsider: OrchestratorClient) -> bool:
    """Whether `session.start` of the other tenant's caller succeeds (not `forbidden`)."""
    try:
        await outsider.start_session(AGENT)
    except Forbidden:
        return False
    return True


async def measure(bench: Bench) -> Propagation:
    """Milliseconds from each KV put until the running instance acts on it (`plan.flips` puts)."""
    flips = bench.plan.flips
    settings = system_settings("orchestrator", bench.url)
    kv = await bench.js.key_value(settings.agent_configs_bucket)
    outsider = OrchestratorClient(
        bench.nc,
        tenant_id="other-tenant",
        user_id="outsider",
        settings=settings.model_copy(update={"client_action_timeout": 5.0}),
    )
    seen_ms: list[float] = []
    missed = 0
    for flip in range(flips + 1):
        public = flip % 2 == 1
        access = Access.PUBLIC if public else Access.TENANT
        await kv.put(AGENT, msgspec.json.encode(AgentConfig(tenant_id=TENANT, access=access)))
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < DEADLINE:
            try:
                if await _outsider_allowed(outsider) is public:
                    break
            except ActionTimeout:
                continue
        else:
            missed += 1
            continue
        if flip:  # the first put only sets the starting state
            seen_ms.append((time.perf_counter() - t0) * 1000)
    await kv.delete(AGENT)
    seen_ms.sort()
    return Propagation(
        flips=flips,
        missed=missed,
        p50_ms=round(seen_ms[len(seen_ms) // 2], 2) if seen_ms else None,
        max_ms=round(seen_ms[-1], 2) if seen_ms else None,
    )
