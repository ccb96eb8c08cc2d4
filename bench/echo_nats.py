"""Floor (a): a raw nats-py echo responder, as a separate process (prints READY when it serves)."""

from __future__ import annotations

import argparse
import asyncio

import nats
from nats.aio.msg import Msg

from .children import announce_ready, until_signalled
from .systems import echo_subject


async def serve(url: str) -> None:
    """Answer every request on the echo subject with its own payload."""
    nc = await nats.connect(url, name="bench-echo")

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(echo_subject(), cb=echo)
    await nc.flush()
    announce_ready()
    await until_signalled()
    await nc.drain()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    asyncio.run(serve(parser.parse_args().url))
