"""Runs the process's background loops: a loop that fails is logged, restarted, and reported.

A loop is a coroutine function. If it raises, the supervisor logs the failure with its
traceback and runs it again after a growing, capped wait (`loop_restart_backoff_*`). A loop
whose last `loop_failure_threshold` runs all failed, none of them lasting `loop_stable_after`
seconds, is *failing*: `/health/ready` refuses and names it. A loop that returns is finished and
not restarted. Nothing a supervisor runs can die without a log line.

A periodic job (`every`) is such a loop around one pass: a pass that fails with a NATS or typed
error (the server away, a leader election) is logged as a warning and the next pass tries again;
any other failure is the loop's, handled as above.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loguru import logger
from nats.errors import Error as NatsError

from orchestrator.codecs.errors import OrchestratorError
from orchestrator.service.runtime.settings import OrchestratorSettings

Loop = Callable[[], Awaitable[None]]
Tick = Callable[[], Awaitable[object]]
# Errors of one pass of a periodic job that the next pass may not meet: a warning, not a failure.
TRANSIENT: tuple[type[Exception], ...] = (NatsError, OrchestratorError)
# How often, and how far apart, `stop` cancels a loop that went on after a cancel.
STOP_TRIES = 20
STOP_RETRY_AFTER = 0.25


@dataclass
class LoopHealth:
    """What the supervisor knows about the loops of one name."""

    failures: int = 0
    last_error: str = ""
    running: bool = False
    running_since: float = 0.0


class Supervisor:
    """Starts supervised loops as tasks and keeps the failure count of each loop name."""

    def __init__(self, settings: OrchestratorSettings) -> None:
        self._initial = settings.loop_restart_backoff_initial
        self._max = settings.loop_restart_backoff_max
        self._threshold = settings.loop_failure_threshold
        self._stable = settings.loop_stable_after
        self._loops: dict[str, LoopHealth] = {}
        self._tasks: set[asyncio.Task] = set()

    def run(self, name: str, loop: Loop) -> asyncio.Task:
        """Run `loop` under supervision; cancel the returned task to stop it for good.

        Several loops may share a name (e.g. one per connection); they share one health entry.
        """
        task = asyncio.create_task(self._supervise(name, loop), name=f"supervised:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def every(self, name: str, interval: float, tick: Tick) -> asyncio.Task:
        """Run `tick` every `interval` seconds (the first after one interval), supervised.

        A pass that raises a `TRANSIENT` error is logged as a warning and not counted; anything
        else fails the loop (traceback, restart with backoff, readiness). Cancel the task to stop.
        """

        async def loop() -> None:
            this = asyncio.current_task()
            while True:
                await asyncio.sleep(interval)
                try:
                    await tick()
                except TRANSIENT as exc:
                    logger.warning("periodic {} failed, next pass in {}s: {}", name, interval, exc)
                # Python 3.11's asyncio.wait_for (under every nats-py request) returns a result
                # that arrives as its task is cancelled and drops the cancel, so a pass may end
                # normally although the job was stopped meanwhile: honour that stop here.
                if this is not None and this.cancelling():
                    raise asyncio.CancelledError

        return self.run(name, loop)

    def failing(self) -> dict[str, str]:
        """Loops that keep failing right now: {name: their last error}."""
        now = time.monotonic()
        return {
            name: health.last_error
            for name, health in self._loops.items()
            if health.failures >= self._threshold
            and (not health.running or now - health.running_since < self._stable)
        }

    async def stop(self) -> None:
        """Cancel every loop still running (owners normally stop their own first)."""
        await cancel_loops({task for task in self._tasks if not task.done()})

    async def _supervise(self, name: str, loop: Loop) -> None:
        health = self._loops.setdefault(name, LoopHealth())
        while True:
            started = health.running_since = time.monotonic()
            health.running = True
            try:
                await loop()
            except asyncio.CancelledError:
                health.running = False
                raise
            except Exception as exc:  # noqa: BLE001 - the supervisor is every loop's boundary
                if time.monotonic() - started >= self._stable:
                    health.failures = 0  # it ran long enough: this is a new streak
                health.failures += 1
                health.running = False
                health.last_error = f"{type(exc).__name__}: {exc}"
                wait = min(self._initial * 2 ** (health.failures - 1), self._max)
                logger.opt(exception=exc).error(
                    "background loop {} failed ({} in a row); restarting in {:.2f}s",
                    name, health.failures, wait,
                )  # fmt: skip
                await asyncio.sleep(wait)
                continue
            health.failures = 0
            health.running = False
            return


async def cancel_loops(tasks: set[asyncio.Task]) -> None:
    """Cancel `tasks` and wait for them to end, cancelling again any that went on.

    A loop may lose a cancel (Python 3.11's `asyncio.wait_for`, under every nats-py request,
    drops one that arrives with the reply) and carry on; it is cancelled again, up to
    `STOP_TRIES` times, so a stop never hangs on it. One still running after that is logged by
    name and left behind.
    """
    pending = {task for task in tasks if not task.done()}
    for _ in range(STOP_TRIES):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=STOP_RETRY_AFTER)
    for task in pending:
        logger.error("background loop {} went on after {} cancels", task.get_name(), STOP_TRIES)
