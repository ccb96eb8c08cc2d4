"""The test programs as child processes, each ready once it printed its ready line: the SDK test
agent, the flaky LLM agent, the turn agent (raw execution contract) and the OpenAI-compatible
model-server stand-in. The programs themselves import none of this."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from support.child_process import TESTS, ChildProcess


class AgentProcess(ChildProcess):
    """tests/sdk_test_agent.py as a child process; `await start()`, then `stop()`."""

    def __init__(self, nats_url: str, log: Path, **agent_env: str) -> None:
        super().__init__([sys.executable, "-m", "sdk_test_agent"], log, {
            "ORCH_NATS_URL": nats_url,
            "ORCH_SHUTDOWN_GRACE": "2",
            **{f"ORCH_AGENT_{k.upper()}": v for k, v in agent_env.items()},
        })  # fmt: skip

    async def start(self, timeout: float = 30.0) -> AgentProcess:
        """Start the process and wait until it has logged that it is ready."""
        self.spawn()
        await self.printed("ready on", timeout)
        return self


class FlakyAgent(ChildProcess):
    """tests/agents/flaky_llm.py as a child process: `await start()` (until it is ready), `kill()`,
    `stop()`."""

    def __init__(self, nats_url: str, log: Path, **agent_env: str) -> None:
        super().__init__([sys.executable, str(TESTS / "agents" / "flaky_llm.py")], log, {
            "ORCH_NATS_URL": nats_url,
            "ORCH_SHUTDOWN_GRACE": "1",
            **{f"ORCH_AGENT_{k.upper()}": v for k, v in agent_env.items()},
        })  # fmt: skip

    async def start(self, timeout: float = 30.0) -> FlakyAgent:
        """Start the process and wait until it has logged that it is ready."""
        self.spawn()
        await self.printed("ready on", timeout)
        return self


class StubProcess(ChildProcess):
    """tests/openai_stub_server.py as a child process: `await start()` returns once it listens."""

    def __init__(self, log: Path) -> None:
        super().__init__([sys.executable, str(TESTS / "openai_stub_server.py")], log)
        self.url = ""

    async def start(self, timeout: float = 30.0) -> StubProcess:
        self.spawn()
        self.url = (await self.printed(r"listening on (\S+)", timeout)).group(1)
        return self


@contextlib.asynccontextmanager
async def turn_agent(url: str, log: Path, delay: float = 0.05) -> AsyncIterator[ChildProcess]:
    """tests/agents/turn_agent.py as its own process, ready once it printed READY; killed after."""
    agent = ChildProcess(
        [sys.executable, str(TESTS / "agents" / "turn_agent.py"), url, str(delay)], log
    ).spawn()
    try:
        await agent.printed("READY")
        yield agent
    finally:
        agent.kill()
