"""The chat page people use, in headless Chromium at phone and desktop widths.

The execution service is the SDK test agent as a real process (`tests/sdk_test_agent.py`): what it
does is chosen by the message (`tools`, `ask`, `block`, `fail <code>`, else an echo).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chromium import Page, browser_port, needs_chromium, open_tab
from support.calls import put_agent
from support.programs import AgentProcess
from support.stack import start_stack, stop_stack

from orchestrator.codecs.agent_configs import AgentConfig, BusyPolicy

pytestmark = needs_chromium

LAST_ANSWER = (
    "([...document.querySelectorAll('.msg.assistant')].at(-1) || {textContent: '', dataset: {}})"
)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[int]:
    async with browser_port(tmp_path / "profile") as port:
        yield port


@pytest.fixture
async def edge(nats_server, tmp_path: Path):
    """Orchestrator, the test agent process and an edge serving the page with dev tokens."""
    from orchestrator.service.edge.edge_server import Edge

    stack = await start_stack(nats_server, agent=None)
    agent = await AgentProcess(nats_server.url, tmp_path / "agent.log").start()
    await put_agent(stack.nc, "helper", AgentConfig(tenant_id="dev", name="Helper"))
    strict = AgentConfig(tenant_id="dev", name="Strict", on_busy=BusyPolicy.REJECT)
    await put_agent(stack.nc, "strict", strict)
    await put_agent(stack.nc, "elsewhere", AgentConfig(tenant_id="acme", name="Elsewhere"))
    edge = Edge(
        stack.settings.model_copy(update={"edge_port": 0}), stack.nc, stack.subjects,
        dev_token_route=True,
    )  # fmt: skip
    await edge.start()
    try:
        yield edge
    finally:
        await edge.stop()
        agent.stop()
        await stop_stack(stack)


async def live(page: Page) -> None:
    await page.wait_for("document.getElementById('status').dataset.state === 'live'", "live")


async def say(page: Page, text: str) -> None:
    await page.wait_for("!document.getElementById('input').disabled", "an enabled input")
    await page.eval(
        f"document.getElementById('input').value = {json.dumps(text)};"
        "document.getElementById('composer').requestSubmit(); true"
    )


async def final_answer(page: Page, count: int) -> str:
    done = "[...document.querySelectorAll('.msg.assistant[data-final=true]')]"
    return await page.wait_for(
        f"{done}.length === {count} && {done}.at(-1).textContent", f"answer {count}"
    )


async def pick(page: Page, agent_id: str) -> None:
    await page.wait_for(
        f"[...document.getElementById('agent').options].some(o => o.value === '{agent_id}')",
        f"agent {agent_id} in the picker",
    )
    await page.eval(
        f"const s = document.getElementById('agent'); s.value = '{agent_id}';"
        "s.dispatchEvent(new Event('change')); true"
    )
    stored = "JSON.parse(localStorage.getItem('nooble4.chat'))"
    await page.wait_for(
        f"(s => s && s.agent_id === '{agent_id}')({stored})",
        f"a session with {agent_id}",
    )
    await live(page)


@pytest.mark.parametrize("width", [375, 1280])
async def test_the_page_shows_tools_and_markdown_safely_at_phone_and_desktop_width(
    browser, edge, width, tmp_path
):
    async with open_tab(browser, f"{edge.url}/") as page:
        await page.viewport(width, 800)
        await live(page)
        assert await page.eval("document.querySelector('label[for=input]').textContent") == (
            "Message"
        )
        assert await page.eval("document.getElementById('status').getAttribute('role')") == (
            "status"
        )
        picker = await page.eval(
            "[...document.getElementById('agent').options].map(o => [o.value, o.text])"
        )
        assert picker == [["demo", "Demo"], ["helper", "Helper"], ["strict", "Strict"]]

        await say(page, "tools")
        assert await final_answer(page, 1) == "Let me look. Found 3."
        tool = await page.wait_for(
            "(d => d && d.querySelector('.tool-result') && d.textContent)"
            "(document.querySelector('details.msg.tool'))",
            "the tool call and its result",
        )
        assert "Tool call: search" in tool and '"q": "nats"' in tool and "3 hits" in tool
        await page.wait_for(
            "document.getElementById('announcer').textContent.includes('Found 3.')",
            "the answer announced",
        )

        hostile = '<img src=x onerror="window.pwned=1"> **bold** [x](javascript:alert(1))'
        await say(page, hostile)
        shown = await final_answer(page, 2)
        assert shown == f"echo: {hostile}".replace("**bold**", "bold")
        last = f"{LAST_ANSWER}"
        assert await page.eval(f"{last}.querySelector('strong').textContent") == "bold"
        assert (
            await page.eval("document.querySelectorAll('#messages img, #messages a').length") == 0
        )
        assert await page.eval("window.pwned === undefined")
        user_text = await page.eval(
            "[...document.querySelectorAll('.msg.user')].at(-1).textContent"
        )
        assert user_text == hostile

        fits = "document.documentElement.scrollWidth <= window.innerWidth"
        assert await page.eval(fits), "the page scrolls sideways"
        await page.screenshot(tmp_path / f"chat-{width}.png")
        assert not [line for line in page.logs if "Content Security Policy" in line], page.logs


async def test_stop_cancels_the_running_answer(browser, edge):
    async with open_tab(browser, f"{edge.url}/") as page:
        await live(page)
        await say(page, "block")
        await page.wait_for(f"{LAST_ANSWER}.textContent.includes('started')", "the answer starts")
        await page.wait_for("!document.getElementById('stop').disabled", "an enabled Stop")
        await page.eval("document.getElementById('stop').click(); true")
        await page.wait_for(f"{LAST_ANSWER}.dataset.status === 'cancelled'", "the turn cancelled")
        assert await page.eval(f"{LAST_ANSWER}.textContent") == "startedStopped."
        await page.wait_for("document.getElementById('stop').disabled", "Stop disabled again")
        await say(page, "after")
        assert await final_answer(page, 2) == "echo: after"


async def test_an_input_request_is_shown_and_answered(browser, edge):
    async with open_tab(browser, f"{edge.url}/") as page:
        await live(page)
        await say(page, "ask")
        prompt = await page.wait_for(
            "(e => e && e.textContent)(document.querySelector('.msg.ask .ask-prompt'))",
            "the agent's question",
        )
        assert prompt == "Demo asks: Approve the refund?"
        label = await page.eval(
            "(i => document.querySelector(`label[for='${i.id}']`).textContent)"
            "(document.querySelector('.msg.ask input'))"
        )
        assert label == "Your answer"
        await page.eval(
            "document.querySelector('.msg.ask input').value = 'yes';"
            "document.querySelector('.msg.ask form').requestSubmit(); true"
        )
        assert await final_answer(page, 1) == "approved=yes"  # the attempt after the answer
        outcome = await page.eval("document.querySelector('.msg.ask .ask-outcome').textContent")
        assert outcome == "You answered: yes"
        assert await page.eval("document.querySelector('.msg.ask form').hidden")


async def test_a_failed_turn_is_shown_as_an_error(browser, edge):
    async with open_tab(browser, f"{edge.url}/") as page:
        await live(page)
        await say(page, "fail validation_error")
        failed = await page.wait_for(
            "(e => e && e.textContent)(document.querySelector('.msg.assistant.failed'))",
            "the failed turn",
        )
        assert failed.startswith("This answer failed: ")
        assert "asked to fail with validation_error" in failed
        await page.wait_for(
            "document.getElementById('announcer').textContent.startsWith('This answer failed')",
            "the failure announced",
        )


async def test_a_refused_message_stays_in_the_box_and_retry_sends_it(browser, edge):
    async with open_tab(browser, f"{edge.url}/") as page:
        await live(page)
        await pick(page, "strict")  # on_busy reject: a 2nd message while one runs is refused
        started = await page.wait_for(
            "(e => e && e.textContent)(document.querySelector('.msg.system'))", "a started note"
        )
        assert started == "Conversation with Strict started"
        await say(page, "block")
        await page.wait_for(f"{LAST_ANSWER}.textContent.includes('started')", "the answer starts")
        await say(page, "second")
        error = await page.wait_for(
            "!document.getElementById('send-error').hidden"
            " && document.getElementById('send-error-text').textContent",
            "the refusal",
        )
        assert "still busy" in error
        assert await page.eval("document.getElementById('input').value") == "second"

        await page.eval("document.getElementById('stop').click(); true")
        await page.wait_for(f"{LAST_ANSWER}.dataset.status === 'cancelled'", "the turn cancelled")
        await page.eval("document.getElementById('retry').click(); true")
        assert await final_answer(page, 2) == "echo: second"
        assert await page.eval("document.getElementById('input').value") == ""
        assert await page.eval("document.getElementById('send-error').hidden")
