"""The execution SDK: an execution service is a name and an async generator of answer parts.

    from orchestrator.service.agent.parts import ask, text, tool_call
    from orchestrator.service.agent.sdk import run_service

    async def handle(request):  # one attempt of one chat task; history in request.history
        yield text("Hello ")
        yield "world"

    run_service("hello", handle)  # reads ORCH_NATS_URL, ORCH_AGENT_*; runs until SIGTERM

Everything else of the contract (docs/execution.md) is done by `ExecutionService`
(`execution_service.py`), which `run_service` runs in a process of its own:

- serves `<p>.execution.chat.run` in queue group `execution`, as the endpoint `run` of the NATS
  micro service `execution-<kind>` (so `nats micro ls` lists it), requests in JSON or
  MessagePack (`Content-Type`), replies in the request's format;
- streams what the handler yields to the request's `stream_subject` (`PartStream`: index from 0,
  text coalesced, heartbeats every `heartbeat_interval`);
- de-duplicates by (task id, attempt): a repeat while the attempt runs shares it, a repeat after
  it finished gets the remembered result; a newer attempt of a task stops its older ones here;
- `ExecutionCancel` on `<p>.execution.chat.cancel` stops an attempt (or all, `attempt` 0); a
  cancelled attempt replies nothing;
- errors reply the error envelope with `Nats-Service-Error` / `Nats-Service-Error-Code`: a
  handler raises a typed error of `codecs/errors.py` (`UpstreamUnavailable` and `Unavailable`,
  `ActionTimeout` and `InternalError` are retried by the orchestrator, the others are final);
  any other exception is logged and replied as `internal`;
- `yield ask(prompt, schema)` ends the attempt `input_required`; the answer arrives in a later
  attempt's `request.inputs`;
- a SERVER span per request, child of the trace context in the request's headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

from nats.errors import Error as NatsError

from orchestrator.service.agent.execution_service import (
    RUN_ENDPOINT,
    SERVICE_PREFIX,
    ExecutionService,
    ServiceStats,
)
from orchestrator.service.agent.parts import Handler
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.subjects import Role, Subjects

__all__ = [
    "RUN_ENDPOINT",
    "SERVICE_PREFIX",
    "ExecutionService",
    "ServiceStats",
    "run_service",
    "serve_service",
]


async def serve_service(
    kind: str,
    handler: Handler,
    settings: OrchestratorSettings,
    agent_settings: AgentSettings,
    stop: asyncio.Event,
    on_ready: Callable[[ExecutionService], Awaitable[None]] | None = None,
) -> None:
    """Connect to `settings.nats_url`, serve `handler` as `execution-<kind>` until `stop` is set."""
    from orchestrator.service.runtime.nats_connection import connect

    telemetry = Telemetry.start(settings)
    name = f"{SERVICE_PREFIX}{kind}-{settings.instance_id}"
    nc = await connect(settings, settings.nats_url, name, role=Role.EXECUTION)
    service = ExecutionService(nc, Subjects(settings.subject_prefix), kind, handler,
                               agent_settings, telemetry)  # fmt: skip
    try:
        await service.start()
        if on_ready is not None:
            await on_ready(service)
        await stop.wait()
    finally:
        await service.stop(settings.shutdown_grace)
        with contextlib.suppress(NatsError):
            await nc.drain()
        await asyncio.to_thread(telemetry.shutdown)


def run_service(kind: str, handler: Handler) -> None:
    """The process of a stand-alone execution service: settings from the environment, logs,
    NATS, then serve until SIGINT or SIGTERM."""
    from orchestrator.service.runtime.logs import configure_logging

    settings = OrchestratorSettings()
    if settings.embedded:
        sys.exit(f"{SERVICE_PREFIX}{kind} needs ORCH_NATS_URL (the bus the orchestrator uses)")
    agent_settings = AgentSettings()
    configure_logging(settings)

    async def main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await serve_service(kind, handler, settings, agent_settings, stop)

    asyncio.run(main())
