"""The end of a helper program's `main` (run by `support.child_process.ChildProcess`): serve
until the test stops it with SIGTERM (or a person with Ctrl-C)."""

from __future__ import annotations

import asyncio
import signal


async def until_terminated() -> None:
    """Until SIGTERM or SIGINT arrives; the caller then closes what it opened."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
