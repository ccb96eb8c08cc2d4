"""What every bench section shares: the server, the bench's own client, its plan and children."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError

from .children import Child, Usage
from .figures import Level
from .load import Budget, Operation, closed_loop
from .plan import Plan

L = TypeVar("L", bound=Level)


@dataclass
class Bench:
    """One bench run: its server, its own client, its plan and the processes it started."""

    url: str
    nc: Client
    js: JetStreamContext
    log_dir: Path
    plan: Plan
    server_pid: int  # the bench's nats-server, measured by the streams section
    children: list[Child] = field(default_factory=list)
    orchestrator: Any = None  # set by orchestrator_procs.start, shared by later sections

    def spawn(self, child: Child, ready_timeout: float = 60.0) -> Child:
        """Start a bench helper and wait for its READY line; it is stopped at the end of the run."""
        self.children.append(child.start())
        child.wait_ready(ready_timeout)
        return child

    def stop_all(self) -> None:
        """Stop every child started in this run: all signalled first, then each awaited."""
        for child in self.children:
            child.terminate()
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
        row: type[L],
        measured: list[Child],
        levels: tuple[int, ...] | None = None,
        budget: Budget | None = None,
    ) -> list[L]:
        """Run `op` at each client count (the plan's by default); one `row` per count, with CPU
        and RSS of the `measured` children. `op`'s latency names are `row`'s own fields."""
        names = row.__struct_fields__[len(Level.__struct_fields__) :]
        rows = []
        for clients in levels or self.plan.levels:
            usage = Usage(measured)
            result = await closed_loop(clients, op, budget or self.plan.budget)
            rows.append(
                row(**result.summary(), **usage.report(result.completed),
                    **result.latencies_of(names))
            )  # fmt: skip
            logger.info(
                "{} x{}: {:.0f}/s errors={}", label, clients, result.throughput, result.errors
            )
        return rows

    @contextlib.asynccontextmanager
    async def send_path_only(self, stream: str) -> AsyncIterator[bool]:
        """Pause the stream's consumers (the workers), then purge what was queued and resume.

        "send -> ack" then measures the send path alone, the same for every system: no worker runs
        beside it, and no backlog is left for the next measurement. Yields whether it paused.
        """
        until = (datetime.now(UTC) + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ")
        names = [info.name for info in await self.js.consumers_info(stream)]
        paused = []
        for name in names:
            try:
                await self.js.pause_consumer(stream, name, until)
                paused.append(name)
            except APIError as exc:  # servers before 2.11 cannot pause: measure with workers
                logger.warning("cannot pause consumer {} on {}: {}", name, stream, exc)
        try:
            yield bool(paused) and len(paused) == len(names)
        finally:
            await self.js.purge_stream(stream)
            for name in paused:
                await self.js.resume_consumer(stream, name)


class SectionSkipped(Exception):
    """A section could not measure at all (its reason goes to `BenchResult.not_measured`)."""


def by_clients(rows: list[L], clients: int) -> L | None:
    """The row measured at `clients` concurrent clients."""
    return next((row for row in rows if row.clients == clients), None)
