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

`AgentProcess` starts it with `ORCH_NATS_URL` and `ORCH_AGENT_*` and waits for its ready line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from orchestrator.codecs.errors import ErrorBody, error_from_body
from orchestrator.codecs.execution_messages import ExecutionRequest
from orchestrator.service.agent.parts import Yielded, ask, text, tool_call, tool_result
from orchestrator.service.agent.sdk import run_service

KIND = "test"
TESTS = Path(__file__).resolve().parent


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


class AgentProcess:
    """The test agent as a child process; `await start()`, then `stop()`."""

    def __init__(self, nats_url: str, log: Path, **agent_env: str) -> None:
        self.log = log
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
            "ORCH_NATS_URL": nats_url,
            "ORCH_SHUTDOWN_GRACE": "2",
            **{f"ORCH_AGENT_{k.upper()}": v for k, v in agent_env.items()},
        }
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> AgentProcess:
        """Start the process (see `ready`)."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sdk_test_agent"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    async def start(self, timeout: float = 20.0) -> AgentProcess:
        """Start the process and wait until it has logged that it is ready."""
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while "ready on" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"test agent did not get ready:\n{self.output()}")
            await asyncio.sleep(0.05)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not end within `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


if __name__ == "__main__":
    run_service(KIND, handle)
