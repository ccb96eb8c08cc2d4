"""A closed-loop load driver: N concurrent clients repeat one operation for a bounded time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from loguru import logger

# An operation returns the latencies (seconds) it observed, by name, e.g. {"ack": .., "final": ..}.
Operation = Callable[[int], Awaitable[dict[str, float]]]


@dataclass(frozen=True)
class Budget:
    """How long one measurement runs and how many operations it may do at most."""

    warmup: float
    duration: float
    max_ops: int = 1_000_000


@dataclass
class LoadResult:
    """What the clients observed inside the measurement window."""

    clients: int
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    completed: int = 0
    errors: int = 0
    first_error: str | None = None

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        """Throughput and latency percentiles (milliseconds) of every named latency."""
        out: dict = {
            "clients": self.clients,
            "seconds": round(self.seconds, 3),
            "completed": self.completed,
            "errors": self.errors,
            "throughput": round(self.throughput, 1),
        }
        for name, values in self.latencies.items():
            out[name] = percentiles(values)
        if self.first_error:
            out["first_error"] = self.first_error
        return out


def percentiles(values: list[float]) -> dict:
    """Nearest-rank p50/p99/p99.9 and mean, in milliseconds."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "mean_ms": None, "samples": 0}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
        "samples": len(ordered),
    }


async def closed_loop(clients: int, op: Operation, budget: Budget) -> LoadResult:
    """Run `clients` loops of `op` for warmup + duration; keep what completes inside the window."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start = start + budget.warmup
    window_end = window_start + budget.duration
    result = LoadResult(clients=clients, seconds=budget.duration)
    started = 0

    async def client(index: int) -> None:
        nonlocal started
        while started < budget.max_ops:
            began = loop.time()
            if began >= window_end:
                return
            started += 1
            try:
                observed = await op(index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - outermost boundary of one client op
                result.errors += 1
                if result.first_error is None:
                    result.first_error = f"{type(exc).__name__}: {exc}"[:300]
                    logger.warning("bench client {} failed: {!r}", index, exc)
                # An error path is usually fast; pause so a broken peer cannot spin the CPU.
                await asyncio.sleep(0.01)
                continue
            # Completions inside the window count (wherever they started): in a closed loop that
            # is the steady-state rate even when one round trip is longer than the window.
            if window_start <= loop.time() <= window_end:
                result.completed += 1
                for name, seconds in observed.items():
                    result.latencies.setdefault(name, []).append(seconds)

    await asyncio.gather(*(client(i) for i in range(clients)))
    measured_until = min(loop.time(), window_end)
    if started >= budget.max_ops:
        result.seconds = max(1e-9, measured_until - window_start)
    return result


def timed(t0: float) -> float:
    """Seconds since `t0` (a `time.perf_counter()` value)."""
    return time.perf_counter() - t0
