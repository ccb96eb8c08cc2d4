"""The reference execution service: the deterministic demo agent, written on the execution SDK.

An execution-service author reads this to see how little is theirs: a handler, an async
generator of the answer's parts for one attempt (history in `request.history`), and a name. The
SDK (`service/agent/sdk.py`, contract in docs/execution.md) does the rest: the queue group, both
codecs, streaming parts to the attempt's `stream_subject` with heartbeats, de-duplication,
cancel, error replies and micro registration as `execution-demo`.

Pausing for a human takes one line: a message starting with `/confirm` (e.g. `/confirm refund 20
EUR`) is answered by `yield ask(...)`, which ends the attempt `input_required`; the user's answer
(`task.respond`) comes back in `request.inputs` of the next attempt, which says what was decided.

Faults for tests (`ORCH_AGENT_*`, applied by the SDK): `delay` sleeps before answering;
`fail_first=N` fails attempts whose `request.attempt <= N`; `fail_always` fails every attempt.
Injected failures are `upstream_unavailable` (503). `chunks` and `chunk_delay` shape the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from nats.aio.client import Client

from orchestrator.codecs.execution_messages import ExecutionRequest
from orchestrator.service.agent.demo_answer import answer_for, confirm_answer, split_answer
from orchestrator.service.agent.parts import Handler, Yielded, ask
from orchestrator.service.agent.sdk import ExecutionService
from orchestrator.service.runtime.settings import AgentSettings
from orchestrator.service.runtime.telemetry import Telemetry
from orchestrator.subjects import Subjects

KIND = "demo"
CONFIRM = "/confirm"
APPROVAL = {"type": "string", "enum": ["yes", "no"]}


def demo_handler(settings: AgentSettings) -> Handler:
    """`[<agent name>] You said: <content>`, in `settings.chunks` pieces `chunk_delay` apart;
    `/confirm <action>` first asks the user to approve the action."""

    async def handle(request: ExecutionRequest) -> AsyncIterator[Yielded]:
        answer = answer_for(request)
        if request.content.startswith(CONFIRM):
            action = request.content.removeprefix(CONFIRM).strip() or "go ahead"
            if not request.inputs:
                yield ask(f"Approve: {action}? (yes/no)", schema=APPROVAL)
                return
            answer = confirm_answer(request, action, request.inputs[-1].response)
        for index, piece in enumerate(split_answer(answer, settings.chunks)):
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
