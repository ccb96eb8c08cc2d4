"""An LLM-like execution service on the SDK: T tokens per answer at R tokens per second.

Not a model: a stand-in with a model's pace. Each token is `<index>:<random word> `; the first
carries the wall-clock nanoseconds at which the agent yielded it (`0:<ns> `), so a client on the
same machine reads first-token overhead (its receive time minus this) and checks every token
arrived once and in order. Run as its own process; prints READY once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import string
import time
from collections.abc import AsyncIterator

from orchestrator.codecs.execution_messages import ExecutionRequest
from orchestrator.service.agent.sdk import serve_service
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings

from .children import announce_ready, until_signalled

KIND = "llm"
_LETTERS = string.ascii_lowercase


def handler_for(tokens: int, rate: float):
    """The SDK handler: `tokens` tokens, token i due at start + i / rate (no drift)."""

    async def handle(request: ExecutionRequest) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        yield f"0:{time.time_ns()} "
        for index in range(1, tokens):
            wait = start + index / rate - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            word = "".join(random.choices(_LETTERS, k=random.randint(2, 8)))
            yield f"{index}:{word} "

    return handle


async def serve(url: str, prefix: str, tokens: int, rate: float) -> None:
    settings = OrchestratorSettings(nats_url=[url], subject_prefix=prefix)
    agent_settings = AgentSettings()  # the SDK's defaults, as a service author would run it
    stop = asyncio.Event()

    async def on_ready(_service) -> None:
        announce_ready()

    async def stop_on_signal() -> None:
        await until_signalled()
        stop.set()

    watcher = asyncio.create_task(stop_on_signal())
    try:
        await serve_service(KIND, handler_for(tokens, rate), settings, agent_settings, stop,
                            on_ready)  # fmt: skip
    finally:
        watcher.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rate", type=float, default=40.0)
    args = parser.parse_args()
    asyncio.run(serve(args.url, args.prefix, args.tokens, args.rate))
