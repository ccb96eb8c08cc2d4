"""What every bench section shares: the server, the bench's own client, budgets and results."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from children import Child, Usage
from load import Budget, Operation, closed_loop
from loguru import logger
from nats.aio.client import Client
from nats.js import JetStreamContext

CLIENT_LEVELS = (1, 64, 256)


@dataclass
class Bench:
    """One bench run: everything measured in it goes to `results`."""

    url: str
    nc: Client
    js: JetStreamContext
    log_dir: Path
    budget: Budget
    quick: bool
    chunks: int
    idle_target: int
    results: dict = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    orchestrator: Any = None  # set by orchestrator_procs.start, shared by later sections

    def spawn(self, child: Child, ready_timeout: float = 60.0) -> Child:
        """Start a bench helper and wait for its READY line; it is stopped at the end of the run."""
        self.children.append(child.start())
        child.wait_ready(ready_timeout)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except OSError as exc:
                logger.warning("stopping {} failed: {}", child.name, exc)
        self.children.clear()

    async def levels(
        self,
        label: str,
        op: Operation,
        measured: list[Child],
        levels: tuple[int, ...] = CLIENT_LEVELS,
        budget: Budget | None = None,
        between=None,
    ) -> list[dict]:
        """Run `op` at each client count; add CPU and RSS of the `measured` children to each."""
        rows = []
        for clients in levels:
            usage = Usage(measured)
            result = await closed_loop(clients, op, budget or self.budget)
            row = result.summary() | usage.report(result.completed)
            rows.append(row)
            logger.info(
                "{} x{}: {:.0f}/s errors={}", label, clients, row["throughput"], row["errors"]
            )
            if between is not None:
                await between()
        return rows

    async def drain(self, stream: str, timeout: float | None = None) -> bool:
        """Wait (bounded) until a work-queue stream is empty: backlog would skew the next level."""
        deadline = time.monotonic() + (
            timeout if timeout is not None else (10 if self.quick else 60)
        )
        while time.monotonic() < deadline:
            info = await self.js.stream_info(stream)
            if info.state.messages == 0:
                return True
            await asyncio.sleep(0.1)
        logger.warning("stream {} still has work queued after the drain timeout", stream)
        return False


def by_clients(rows: list[dict], clients: int) -> dict | None:
    """The row measured at `clients` concurrent clients."""
    return next((row for row in rows if row["clients"] == clients), None)
