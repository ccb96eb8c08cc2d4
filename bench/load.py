"""A closed-loop load driver: N concurrent clients repeat one operation for a bounded time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from loguru import logger

from .figures import Latency

# An operation returns the latencies (seconds) it observed, by name, e.g. {"ack": .., "final": ..}.
Operation = Callable[[int], Awaitable[dict[str, float]]]


@dataclass(frozen=True)
class Budget:
    """How long one measurement runs and how many operations it may do at most.

    With `min_completed`, the window stays open past `duration` until that many operations
    completed in it (bounded by `overtime` seconds more): a smoke run's short windows then always
    hold a sample, however loaded the machine.
    """

    warmup: float
    duration: float
    max_ops: int = 1_000_000
    min_completed: int = 0
    overtime: float = 60.0


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
        """The `LoadSummary` fields: counts and throughput (latencies are the row's own)."""
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 3),
            "completed": self.completed,
            "errors": self.errors,
            "throughput": round(self.throughput, 1),
            "first_error": self.first_error,
        }

    def latencies_of(self, names: tuple[str, ...]) -> dict[str, Latency]:
        """Percentiles of each of `names`; a latency the operation reported beyond them is an
        error (a row type that lacks a field for it would drop the figure)."""
        unexpected = set(self.latencies) - set(names)
        if unexpected:
            raise ValueError(f"latencies {sorted(unexpected)} have no field among {names}")
        return {name: percentiles(self.latencies.get(name, [])) for name in names}


def percentiles(values: list[float]) -> Latency:
    """Nearest-rank p50/p99/p99.9 and mean, in milliseconds (None without a sample)."""
    if not values:
        return Latency(p50_ms=None, p99_ms=None, p999_ms=None, mean_ms=None, samples=0)
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))] * 1000, 3)

    return Latency(
        p50_ms=at(0.50),
        p99_ms=at(0.99),
        p999_ms=at(0.999),
        mean_ms=round(sum(ordered) / len(ordered) * 1000, 3),
        samples=len(ordered),
    )


async def closed_loop(clients: int, op: Operation, budget: Budget) -> LoadResult:
    """Run `clients` loops of `op` for warmup + duration; keep what completes inside the window."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start = start + budget.warmup
    window_end = window_start + budget.duration
    hard_end = window_end + (budget.overtime if budget.min_completed else 0.0)
    result = LoadResult(clients=clients, seconds=budget.duration)
    started = 0
    last_counted = window_end

    def window_open(now: float) -> bool:
        if now <= window_end:
            return True
        return result.completed < budget.min_completed and now <= hard_end

    async def client(index: int) -> None:
        nonlocal started, last_counted
        while started < budget.max_ops:
            began = loop.time()
            if not window_open(began):
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
            now = loop.time()
            if window_start <= now and window_open(now):
                result.completed += 1
                last_counted = max(last_counted, now)
                for name, seconds in observed.items():
                    result.latencies.setdefault(name, []).append(seconds)

    await asyncio.gather(*(client(i) for i in range(clients)))
    if started >= budget.max_ops:
        result.seconds = max(1e-9, min(loop.time(), window_end) - window_start)
    elif last_counted > window_end:  # the window was held open for `min_completed`
        result.seconds = last_counted - window_start
    return result
