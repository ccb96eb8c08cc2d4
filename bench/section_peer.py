"""The peer: the same send path served by FastStream with pydantic models, in the same run."""

from __future__ import annotations

from orchestrator.service.store.streams import ensure_resources

from .chat_client import NatsChat
from .children import Child
from .driver import Bench
from .figures import AckLevel, Peer
from .systems import system_settings, system_subjects


async def run(bench: Bench) -> Peer:
    """Send -> ack at the plan's client counts."""
    settings = system_settings("peer", bench.url)
    subjects = system_subjects(settings)
    await ensure_resources(bench.js, settings, subjects)
    child = bench.spawn(Child.module("peer", "peer", ["--url", bench.url], bench.log_dir))
    chat = NatsChat(bench.nc, subjects)
    await chat.prepare(max(bench.plan.levels))
    rows = await bench.levels("faststream peer ack", chat.ack_only, AckLevel, [child])
    child.stop()
    # Nobody consumes the peer's work queue; purge it so it holds no disk for the rest of the run.
    await bench.js.purge_stream(settings.work_stream)
    return Peer(framework="faststream", ack=rows)
