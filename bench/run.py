"""`python -m bench` (`make bench`): floors, the FastStream peer, the orchestrator, scale,
streams and failover, measured in one run.

Writes bench/results/latest.json (`BenchResult` of bench/figures.py; ratios under `ratios`) and
bench/results/latest.md (the table for docs/performance.md), and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import psutil
from loguru import logger

from orchestrator.service.runtime.nats_server import NatsServer

from . import (
    report,
    section_failover,
    section_floors,
    section_orchestrator,
    section_peer,
    section_scale,
    section_streams,
)
from .driver import Bench, SectionSkipped
from .figures import (
    SECTION_FIELDS,
    BenchResult,
    Host,
    RunBudget,
    RunInfo,
    Sections,
    encode_result,
)
from .plan import Plan, plan_from
from .ratios import ratios

# Section name -> what measures it; each name is one of figures.SECTION_FIELDS.
SECTIONS: dict[str, Callable[[Bench], Awaitable[msgspec.Struct]]] = {
    "floors": section_floors.run,
    "peer": section_peer.run,
    "orchestrator": section_orchestrator.run,
    "scale": section_scale.run,
    "streams": section_streams.run,
    "failover": section_failover.run,
}
RESULTS = Path(__file__).resolve().parent / "results"


def raise_fd_limit() -> int:
    """Children inherit this, so the edge can hold the idle WebSockets the scale section opens."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="about one minute instead of five")
    preset.add_argument(
        "--smoke",
        action="store_true",
        help="every figure once at tiny counts (the test's run): checks the bench, not the system",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS)}",
    )
    parser.add_argument("--duration", type=float, help="seconds measured per client level")
    parser.add_argument("--idle", type=int, help="idle WebSockets to hold (default 10000)")
    parser.add_argument("--chunks", type=int, default=4, help="chunk events per answer")
    parser.add_argument(
        "--stream-levels", help="comma-separated client counts of the streams section"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def run_info(plan: Plan, sections: list[str], seconds: float) -> RunInfo:
    return RunInfo(
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=round(seconds, 1),
        quick=plan.quick,
        smoke=plan.smoke,
        sections=sections,
        budget=RunBudget(warmup=plan.budget.warmup, duration=plan.budget.duration),
        chunks_per_answer=plan.chunks,
        host=Host(
            python=platform.python_version(),
            platform=platform.platform(),
            cpus=psutil.cpu_count() or 0,
            nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        ),
    )


async def bench_run(plan: Plan, sections: list[str], store: Path) -> BenchResult:
    """Run `sections` in order on one nats-server; every section field of the result is filled
    or None with its reason in `not_measured`."""
    server = NatsServer(store / "nats").start()
    nc = await nats.connect(server.url, name="bench-driver", max_reconnect_attempts=3)
    bench = Bench(
        url=server.url,
        nc=nc,
        js=nc.jetstream(timeout=10),
        log_dir=store,
        plan=plan,
        server_pid=server.pid,
    )
    measured: dict[str, msgspec.Struct] = {}
    not_measured: dict[str, str] = {}
    started = time.monotonic()
    try:
        for name in sections:
            logger.info("section {}", name)
            try:
                measured[name] = await SECTIONS[name](bench)
            except SectionSkipped as exc:
                logger.warning("{} section skipped: {}", name, exc)
                not_measured[name] = str(exc)
    finally:
        bench.stop_all()
        await nc.close()
        server.stop()
    for name in SECTION_FIELDS:
        if name not in measured and name not in not_measured:
            not_measured[name] = f"not run (sections: {','.join(sections)})"
    parts = Sections(**{name: measured.get(name) for name in SECTION_FIELDS},
                     not_measured=not_measured)  # fmt: skip
    return BenchResult(
        **msgspec.structs.asdict(parts),
        run=run_info(plan, sections, time.monotonic() - started),
        ratios=ratios(parts, plan.at),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_from(args)
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="<green>{time:HH:mm:ss}</green> {message}")
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="nooble-bench-") as tmp:
        result = asyncio.run(bench_run(plan, args.sections.split(","), Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(msgspec.json.format(encode_result(result), indent=2) + b"\n")
    markdown = report.markdown(result)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    report.plot(result, args.out.with_suffix(".png"))
    logger.info("wrote {}", args.out)
    return 0
