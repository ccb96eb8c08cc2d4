"""The reference execution service: the deterministic demo agent, written on the execution SDK.

An execution-service author reads this to see how little is theirs: a handler, an async
generator of the answer's parts for one attempt (history in `request.history`), and a name. The
SDK (`service/agent/sdk.py`, contract in docs/execution.md) does the rest: the queue group, both
codecs, streaming parts to the attempt's `stream_subject` with heartbeats, de-duplication,
cancel, error replies and micro registration as `execution-demo`.

Faults for tests (`ORCH_AGENT_*`, applied by the SDK): `delay` sleeps before answering;
`fail_first=N` fails attempts whose `request.attempt <= N`; `fail_always` fails every attempt.
Injected failures are `upstream_unavailable` (503). `chunks` and `chunk_delay` shape the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from nats.aio.client import Client

from orchestrator.codecs.execution_messages import ExecutionRequest
from orchestrator.service.agent.demo_answer import answer_for, split_answer
from orchestrator.service.agent.parts import Handler, Yielded
from orchestrator.service.agent.sdk import ExecutionService
from orchestrator.service.runtime.settings import AgentSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.subjects import Subjects

KIND = "demo"


def demo_handler(settings: AgentSettings) -> Handler:
    """`[<agent name>] You said: <content>`, in `settings.chunks` pieces `chunk_delay` apart."""

    async def handle(request: ExecutionRequest) -> AsyncIterator[Yielded]:
        for index, piece in enumerate(split_answer(answer_for(request), settings.chunks)):
            if index and settings.chunk_delay:
                await asyncio.sleep(settings.chunk_delay)
            yield piece

    return handle


class ReferenceAgent(ExecutionService):
    """The demo agent as an SDK execution service (`execution-demo`) on one connection."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        settings: AgentSettings,
        telemetry: Telemetry | None = None,
    ) -> None:
        super().__init__(nc, subjects, KIND, demo_handler(settings), settings, telemetry)
