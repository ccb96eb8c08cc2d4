"""The chat page in headless Chromium, driven over the DevTools protocol with aiohttp."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import wait_until

CHROMIUM = Path("/usr/bin/chromium")
STEP_TIMEOUT = 20.0

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)"
)


class Page:
    """One browser tab: commands over its DevTools WebSocket, events ignored."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self._ws.send_json({"id": self._id, "method": method, "params": params})
        for _ in range(10_000):
            msg = json.loads((await self._ws.receive(timeout=STEP_TIMEOUT)).data)
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg["result"]
        raise AssertionError(f"no reply to {method}")

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str) -> Any:
        """Poll a JavaScript expression until it is truthy (bounded)."""
        found: list[Any] = [None]

        async def shown() -> bool:
            found[0] = await self.eval(expression)
            return bool(found[0])

        try:
            await wait_until(shown, STEP_TIMEOUT, 0.1, what)
        except AssertionError:
            status = await self.eval("document.getElementById('status').textContent")
            raise AssertionError(f"page never showed {what} (status: {status!r})") from None
        return found[0]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[int]:
    """Chromium with a throw-away profile; yields its DevTools port."""
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        else:
            raise AssertionError("Chromium did not open its DevTools port")
        yield int(port_file.read_text().split()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


ANSWERS = (
    "[...document.querySelectorAll('.msg.assistant[data-final=true]')].map(e => e.textContent)"
)
USERS = "[...document.querySelectorAll('.msg.user')].map(e => e.textContent)"


async def say(page: Page, text: str) -> None:
    await page.wait_for("!document.getElementById('input').disabled", "an open socket")
    await page.eval(
        f"document.getElementById('input').value = {json.dumps(text)};"
        "document.getElementById('composer').requestSubmit(); true"
    )


@pytest.fixture
async def edge(stack):
    """What `orchestrator dev` serves: the page gets its token from the dev token route."""
    from orchestrator.service.edge.edge_server import Edge

    edge = Edge(
        stack.settings.model_copy(update={"edge_port": 0}), stack.nc, stack.subjects,
        dev_token_route=True,
    )  # fmt: skip
    await edge.start()
    yield edge
    await edge.stop()


async def test_the_page_chats_with_streaming_and_resumes_after_reload(browser, edge):
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{browser}/json/new?{edge.url}/") as resp:
            target = await resp.json()
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            await page.wait_for(
                "document.getElementById('status').dataset.state === 'live'", "live"
            )
            await say(page, "hello page")
            answers = await page.wait_for(f"{ANSWERS}.length === 1 && {ANSWERS}", "an answer")
            assert answers == ["[Demo] You said: hello page"]
            # The task's final status follows its answer: once the page saw it, no turn is open.
            first_last_seq = await page.wait_for(
                "(s => s.open && s.open.length === 0 && s.last_seq)"
                "(JSON.parse(localStorage.getItem('nooble4.chat')))",
                "the turn's final status",
            )
            assert first_last_seq > 0

            # Cleared first so a poll that still reaches the old document cannot pass.
            await page.eval("window.nooble4Ready = undefined; true")
            await page.call("Page.reload")
            await page.wait_for("window.nooble4Ready !== undefined", "a resumed session")
            ready = await page.eval("window.nooble4Ready")
            assert ready["after_seq"] == first_last_seq  # resumed, not replayed from the start
            assert await page.eval(ANSWERS) == ["[Demo] You said: hello page"]  # history shown
            assert await page.eval(USERS) == ["hello page"]

            await say(page, "again")
            answers = await page.wait_for(f"{ANSWERS}.length === 2 && {ANSWERS}", "a 2nd answer")
            assert answers == ["[Demo] You said: hello page", "[Demo] You said: again"]
            assert await page.eval(USERS) == ["hello page", "again"]
