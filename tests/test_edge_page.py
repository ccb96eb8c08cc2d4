"""The chat page in headless Chromium with the reference agent: chat, stream, reload, resume."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chromium import Page, browser_port, needs_chromium, open_tab

pytestmark = needs_chromium

ANSWERS = (
    "[...document.querySelectorAll('.msg.assistant[data-final=true]')].map(e => e.textContent)"
)
USERS = "[...document.querySelectorAll('.msg.user')].map(e => e.textContent)"


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[int]:
    async with browser_port(tmp_path / "profile") as port:
        yield port


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
    async with open_tab(browser, f"{edge.url}/") as page:
        await page.wait_for("document.getElementById('status').dataset.state === 'live'", "live")
        assert await page.eval("document.getElementById('status').textContent") == "Connected"
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
        assert not [line for line in page.logs if "Content Security Policy" in line]
