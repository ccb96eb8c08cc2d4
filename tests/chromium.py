"""Headless Chromium driven over the DevTools protocol with aiohttp: tabs, evaluation, screenshots.

`browser_port()` starts Chromium with a throw-away profile and yields its DevTools port;
`open_tab(http, port, url)` gives a `Page`. Skipped with a reason when Chromium is missing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import wait_until

CHROMIUM = Path("/usr/bin/chromium")
STEP_TIMEOUT = 20.0

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)"
)


# What DevTools answers to an evaluation that a navigation (the first load, a reload) overtook: the
# document it ran in is gone. Not a failure of the page: the next poll runs in the new document.
NAVIGATION_ERRORS = (
    "Execution context was destroyed",
    "Cannot find default execution context",
    "Cannot find context with specified id",
    "Inspected target navigated or closed",
)


class DevToolsError(AssertionError):
    """An error reply to a DevTools command."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method} failed: {error}")
        self.message = str(error.get("message", ""))

    @property
    def navigated(self) -> bool:
        """The command ran into a navigation (see NAVIGATION_ERRORS)."""
        return any(text in self.message for text in NAVIGATION_ERRORS)


class Page:
    """One browser tab: commands over its DevTools WebSocket; console and log entries are kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._id = 0
        self.logs: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self._ws.send_json({"id": self._id, "method": method, "params": params})
        for _ in range(10_000):
            msg = json.loads((await self._ws.receive(timeout=STEP_TIMEOUT)).data)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise DevToolsError(method, msg["error"])
                return msg["result"]
            self._keep(msg)
        raise AssertionError(f"no reply to {method}")

    def _keep(self, msg: dict[str, Any]) -> None:
        if msg.get("method") == "Log.entryAdded":
            self.logs.append(msg["params"]["entry"].get("text", ""))
        elif msg.get("method") == "Runtime.exceptionThrown":
            details = msg["params"]["exceptionDetails"]
            self.logs.append(details.get("exception", {}).get("description", details.get("text")))

    async def eval(self, expression: str, await_promise: bool = False) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=await_promise,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str) -> Any:
        """Poll a JavaScript expression until it is truthy (bounded)."""
        found: list[Any] = [None]

        async def shown() -> bool:
            try:
                found[0] = await self.eval(expression)
            except DevToolsError as exc:
                if not exc.navigated:
                    raise
                return False  # evaluated while the document was being replaced: poll again
            return bool(found[0])

        try:
            await wait_until(shown, STEP_TIMEOUT, 0.1, what)
        except AssertionError:
            try:
                status = await self.eval(
                    "[location.href, document.readyState,"
                    " (document.getElementById('status') || {}).textContent]"
                )
            except DevToolsError as exc:
                status = f"not readable: {exc.message}"
            raise AssertionError(
                f"page never showed {what} (location, readyState, status: {status!r}, "
                f"console: {self.logs})"
            ) from None
        return found[0]

    async def viewport(self, width: int, height: int) -> None:
        mobile = width < 600
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=mobile,
        )  # fmt: skip

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def browser_port(profile: Path) -> AsyncIterator[int]:
    """Chromium with a throw-away profile; yields its DevTools port, stops it afterwards."""
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1", "about:blank",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        await wait_until(
            lambda: port_file.exists() and port_file.read_text().strip(),
            30, 0.1, "Chromium to open its DevTools port",
        )  # fmt: skip
        yield int(port_file.read_text().split()[0])
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            os.killpg(proc.pid, 9)
            await proc.wait()


@contextlib.asynccontextmanager
async def open_tab(port: int, url: str) -> AsyncIterator[Page]:
    """A new tab on `url` with its console and errors recorded (`Page.logs`)."""
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as resp:
            target = await resp.json()
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            # Recording starts before the page loads, so its first errors are kept too.
            await page.call("Log.enable")
            await page.call("Runtime.enable")
            await page.call("Page.navigate", url=url)
            await page.wait_for(
                f"location.href === {json.dumps(url)} && document.readyState !== 'loading'",
                f"{url} loaded",
            )
            yield page
