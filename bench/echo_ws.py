"""Floor (b): a plain aiohttp WebSocket echo server, as a separate process."""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import WSMsgType, web

from .children import announce_ready, until_signalled


async def echo(request: web.Request) -> web.WebSocketResponse:
    """Send every text frame straight back."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    announce_ready()
    await until_signalled()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))
