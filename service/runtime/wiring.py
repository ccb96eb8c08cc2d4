"""What every part of one orchestrator instance is built from: made once, passed down.

One frozen object instead of the same five arguments in every constructor: the NATS connection
and its JetStream context, the settings, the subject names, telemetry (tracer, and `metrics`,
never None: the no-op meter's when metrics are off) and the supervisor that runs every
background loop. `Orchestrator` builds it; a test builds one with `Wiring.build`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nats.aio.client import Client
from nats.js import JetStreamContext

from orchestrator.service.runtime.metrics import Metrics
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.supervisor import Supervisor
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.subjects import Subjects


@dataclass(frozen=True)
class Wiring:
    """The process-wide collaborators of one instance's parts."""

    nc: Client
    js: JetStreamContext
    settings: OrchestratorSettings
    subjects: Subjects
    telemetry: Telemetry
    supervisor: Supervisor

    @classmethod
    def build(
        cls,
        nc: Client,
        settings: OrchestratorSettings,
        telemetry: Telemetry | None = None,
        supervisor: Supervisor | None = None,
    ) -> Wiring:
        """Telemetry off and a supervisor of its own unless given (the process's)."""
        return cls(
            nc=nc,
            js=nc.jetstream(timeout=settings.nats_request_timeout),
            settings=settings,
            subjects=Subjects(settings.subject_prefix),
            telemetry=telemetry or Telemetry.off(),
            supervisor=supervisor or Supervisor(settings),
        )

    @property
    def metrics(self) -> Metrics:
        return self.telemetry.metrics

    def on(self, nc: Client) -> Wiring:
        """The same wiring on another connection (e.g. the one execution services answer)."""
        return replace(self, nc=nc, js=nc.jetstream(timeout=self.settings.nats_request_timeout))
