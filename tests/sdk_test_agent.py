"""A test execution service built on the SDK, run as a real process: `python -m sdk_test_agent`.

What it does is chosen by the request's content, so one process serves every SDK test:

| content            | the handler                                                            |
|--------------------|------------------------------------------------------------------------|
| `tokens N`         | yields N text tokens `w0 w1 ...` at full speed                         |
| `sleep S`          | sleeps S seconds, then yields `slept`                                  |
| `block`            | yields `started`, then waits until cancelled                           |
| `tools`            | text, a tool call, its result, text                                    |
| `ask`              | without inputs: text, then asks for approval; with inputs: the answer  |
| `fail <code>`      | raises the typed error of `<code>` (codecs/errors.py)                  |
| `crash`            | raises a plain RuntimeError                                            |
| anything else      | `echo: <content>`                                                      |

`support.programs.AgentProcess` starts it with `ORCH_NATS_URL` and `ORCH_AGENT_*` and waits for
its ready line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from orchestrator.codecs.errors import ErrorBody, error_from_body
from orchestrator.codecs.execution_messages import ExecutionRequest
from orchestrator.service.agent.parts import Yielded, ask, text, tool_call, tool_result
from orchestrator.service.agent.sdk import run_service

KIND = "test"


async def handle(request: ExecutionRequest) -> AsyncIterator[Yielded]:
    """The test agent's behaviour, chosen by `request.content`."""
    command, _, arg = request.content.partition(" ")
    match command:
        case "tokens":
            for i in range(int(arg)):
                yield f"w{i} "
        case "sleep":
            await asyncio.sleep(float(arg))
            yield "slept"
        case "block":
            yield "started"
            await asyncio.Event().wait()
        case "tools":
            yield text("Let me look. ")
            yield tool_call("c1", "search", {"q": "nats"})
            yield tool_result("c1", "3 hits")
            yield text("Found 3.")
        case "ask":
            if not request.inputs:
                yield "I need approval. "
                yield ask("Approve the refund?", schema={"type": "boolean"})
                yield "never sent"
            yield f"approved={request.inputs[-1].response}"
        case "fail":
            raise error_from_body(ErrorBody(code=arg, message=f"asked to fail with {arg}"))
        case "crash":
            raise RuntimeError("the handler has a bug")
        case _:
            yield f"echo: {request.content}"


if __name__ == "__main__":
    run_service(KIND, handle)
