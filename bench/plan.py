"""How much one bench run measures: the full run, `--quick`, and `--smoke` (the test's run)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from .load import Budget


@dataclass(frozen=True)
class StreamPlan:
    """The streams section: levels, answers' length and pace, start spread, turns, target."""

    levels: tuple[int, ...]
    tokens: int
    rate: float  # tokens per second of one answer
    spread: float  # seconds over which the clients' first turns start
    turns: int
    overhead_p99_target_ms: float

    @property
    def answer_seconds(self) -> float:
        return self.tokens / self.rate


@dataclass(frozen=True)
class FailoverPlan:
    """The failover section: chat clients, and the bounds of its waits."""

    clients: int
    kill_within: float  # seconds for the doomed instance to be running a chat
    answers_within: float  # seconds after the kill for every acknowledged chat's answer


@dataclass(frozen=True)
class Plan:
    """Client counts, budgets and counts of one run; every section reads its part here."""

    levels: tuple[int, ...]  # client counts of the floors, the peer and the orchestrator
    at: int  # the client count at which ratios and targets are read (one of `levels`)
    budget: Budget
    sweep_levels: tuple[int, ...]
    sweep_budget: Budget
    idle_target: int  # idle WebSockets to hold
    idle_seconds: float  # bound on opening them
    idle_settle: float  # seconds the sockets sit idle before RSS is read
    session_start_seconds: float  # bound on starting a session per idle socket
    flips: int  # agent config changes of the propagation figure
    chunks: int  # chunk events per answer
    streams: StreamPlan
    failover: FailoverPlan
    quick: bool = False
    smoke: bool = False

    @property
    def small_levels(self) -> tuple[int, ...]:
        """The levels up to `at`, for floors that need not be driven past it."""
        return tuple(n for n in self.levels if n <= self.at)


TOKENS = 200
RATE = 40.0
OVERHEAD_P99_MS = 100.0

FULL = Plan(
    levels=(1, 64, 256),
    at=64,
    budget=Budget(warmup=1.0, duration=3.0),
    sweep_levels=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    # The warm-up must outlast one round trip at 256 clients (about a second here).
    sweep_budget=Budget(warmup=1.0, duration=1.5),
    idle_target=10_000,
    idle_seconds=120.0,
    idle_settle=2.0,
    session_start_seconds=90.0,
    flips=20,
    chunks=4,
    streams=StreamPlan(
        levels=(50, 100, 200, 400, 700, 1000, 1400),
        tokens=TOKENS,
        rate=RATE,
        spread=TOKENS / RATE,
        turns=2,
        overhead_p99_target_ms=OVERHEAD_P99_MS,
    ),
    # The answers wait out ORCH_TASK_LEASE (8 s by default) and their own run on the survivor.
    failover=FailoverPlan(clients=32, kill_within=60.0, answers_within=120.0),
)

QUICK = dataclasses.replace(
    FULL,
    budget=Budget(warmup=0.5, duration=1.0),
    sweep_levels=(1, 8, 64, 256),
    sweep_budget=Budget(warmup=1.0, duration=1.0),
    idle_target=1000,
    idle_seconds=30.0,
    session_start_seconds=30.0,
    streams=dataclasses.replace(
        FULL.streams, levels=(25, 100, 250), spread=TOKENS / RATE / 2, turns=1
    ),
    quick=True,
)

# Every figure once, at counts small enough for a test: the figures mean nothing, their presence
# does. Each window waits for a completed operation and the first-token target is loose, so a
# loaded machine slows the run down instead of leaving a figure empty.
SMOKE = dataclasses.replace(
    QUICK,
    levels=(1, 4),
    at=4,
    budget=Budget(warmup=0.05, duration=0.15, min_completed=1),
    sweep_levels=(1, 4),
    sweep_budget=Budget(warmup=0.05, duration=0.15, min_completed=1),
    idle_target=32,  # RSS grows by whole pages: enough sockets that it visibly grows
    idle_seconds=60.0,
    idle_settle=0.2,
    session_start_seconds=60.0,
    flips=2,
    streams=StreamPlan(
        levels=(2,), tokens=8, rate=40.0, spread=0.05, turns=1, overhead_p99_target_ms=60_000.0
    ),
    failover=dataclasses.replace(FULL.failover, clients=4),
    quick=False,
    smoke=True,
)


def plan_from(args: argparse.Namespace) -> Plan:
    """The preset the flags pick, with the command line's overrides."""
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    changes: dict = {"chunks": args.chunks}
    if args.duration:
        changes["budget"] = dataclasses.replace(plan.budget, duration=args.duration)
    if args.idle:
        changes["idle_target"] = args.idle
    if args.stream_levels:
        levels = tuple(int(n) for n in args.stream_levels.split(","))
        changes["streams"] = dataclasses.replace(plan.streams, levels=levels)
    return dataclasses.replace(plan, **changes)
