"""What every part of the edge is built from, made once per edge by `build_app` and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client

from orchestrator.codecs.errors import RateLimited
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.edge.auth import TokenVerifier
from orchestrator.service.edge.bus import BusClient
from orchestrator.service.edge.ratelimit import UserLimiter
from orchestrator.service.runtime.metrics import Metrics
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.subjects import Subjects


@dataclass(frozen=True)
class EdgeDeps:
    """The edge's settings, NATS connection and the collaborators its routes share.

    `metrics` is the process's (a no-op one when metrics are off), `supervisor` the process's
    too, so `/health/ready` sees the edge's loops beside the orchestrator's.
    """

    settings: OrchestratorSettings
    nc: Client
    subjects: Subjects
    bus: BusClient
    verifier: TokenVerifier
    limiter: UserLimiter
    supervisor: Supervisor
    metrics: Metrics

    def take_request(self, ctx: ExecutionContext) -> None:
        """One request of the caller against its per-user rate: `rate_limited` (counted) if over."""
        wait = self.limiter.take(ctx.tenant_id, ctx.user_id)
        if wait is not None:
            self.metrics.rate_limited("user")
            raise RateLimited("too many requests", {"retry_after": round(wait, 3)})
