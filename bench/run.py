"""`python -m bench` (`make bench`): floors, the FastStream peer, the orchestrator, scale and
streams, measured in one run.

Writes bench/results/latest.json (every figure; ratios under keys containing `ratio`) and
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
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import psutil
from loguru import logger

from orchestrator.service.runtime.nats_server import NatsServer

from . import (
    report,
    section_floors,
    section_orchestrator,
    section_peer,
    section_scale,
    section_streams,
)
from .driver import Bench
from .load import Budget

SECTIONS = {
    "floors": section_floors.run,
    "peer": section_peer.run,
    "orchestrator": section_orchestrator.run,
    "scale": section_scale.run,
    "streams": section_streams.run,
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about one minute instead of five")
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


async def bench_run(args: argparse.Namespace, store: Path) -> dict:
    duration = args.duration or (1.0 if args.quick else 3.0)
    budget = Budget(warmup=0.5 if args.quick else 1.0, duration=duration)
    server = NatsServer(store / "nats").start()
    nc = await nats.connect(server.url, name="bench-driver", max_reconnect_attempts=3)
    bench = Bench(
        url=server.url,
        nc=nc,
        js=nc.jetstream(timeout=10),
        log_dir=store,
        budget=budget,
        quick=args.quick,
        chunks=args.chunks,
        idle_target=args.idle or (1000 if args.quick else 10_000),
        server_pid=server.pid,
        stream_levels=tuple(int(n) for n in args.stream_levels.split(","))
        if args.stream_levels
        else None,
    )
    started = time.monotonic()
    try:
        for name in args.sections.split(","):
            logger.info("section {}", name)
            await SECTIONS[name](bench)
    finally:
        bench.stop_all()
        await nc.close()
        server.stop()
    bench.results["run"] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "sections": args.sections.split(","),
        "budget": {"warmup": budget.warmup, "duration": budget.duration},
        "chunks_per_answer": args.chunks,
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": psutil.cpu_count(),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        },
    }
    bench.results["ratios"] = report.ratios(bench.results)
    return bench.results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="<green>{time:HH:mm:ss}</green> {message}")
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="nooble-bench-") as tmp:
        results = asyncio.run(bench_run(args, Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(msgspec.json.format(msgspec.json.encode(results), indent=2) + b"\n")
    markdown = report.markdown(results)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    report.plot(results, args.out.with_suffix(".png"))
    logger.info("wrote {}", args.out)
    return 0
