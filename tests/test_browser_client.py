"""The browser client (`static/nooble-client.js`) and the markdown renderer, in headless Chromium.

The page they run in is served by a real edge in front of the real orchestrator and reference
agent, so the README example runs exactly as a newcomer would run it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chromium import browser_port, needs_chromium, open_tab

from orchestrator.service.edge.edge_server import Edge

pytestmark = needs_chromium
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[int]:
    async with browser_port(tmp_path / "profile") as port:
        yield port


def dev_edge(stack, port: int = 0) -> Edge:
    settings = stack.settings.model_copy(update={"edge_port": port})
    return Edge(settings, stack.nc, stack.subjects, dev_token_route=True)


@pytest.fixture
async def edge(stack):
    edge = dev_edge(stack)
    await edge.start()
    yield edge
    await edge.stop()


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Browser client", 1)[1]
    return re.search(r"```js\n(.*?)```", section, re.S).group(1)


def as_script(code: str) -> str:
    """The example as an expression: its import made dynamic, its console.log lines returned."""
    code = re.sub(
        r'^import \{ (.+) \} from "(.+)";$',
        r'const { \1 } = await import(new URL("\2", location.href));',
        code,
        flags=re.M,
    )
    return (
        "(async () => { const logs = [];"
        " const console = { log: (...a) => logs.push(a.join(' ')) };"
        f"\n{code}\nreturn logs; }})()"
    )


async def test_the_readme_browser_example_runs(browser, edge):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 11  # ten lines and the import's blank line
    async with open_tab(browser, f"{edge.url}/health/live") as page:
        logs = await page.eval(as_script(code), await_promise=True)
    assert logs[-1] == "[Demo] You said: Hello"
    streamed = [line for line in logs if line.startswith("so far:")]
    assert streamed and streamed[-1] == "so far: [Demo] You said: Hello"


def running(seq: int, task: str, attempt: int) -> dict:
    return {"type": "task.status", "seq": seq,
            "data": {"task_id": task, "status": "running", "attempt": attempt}}  # fmt: skip


def chunk(seq: int, task: str, attempt: int, index: int, content: str) -> dict:
    data = {"task_id": task, "attempt": attempt, "index": index, "content": content}
    return {"type": "chat.chunk", "seq": seq, "data": data}


CLIENT = "await import(new URL('/static/nooble-client.js', location.href))"


async def test_a_retry_discards_earlier_attempts_and_a_repeated_seq_is_ignored(browser, edge):
    frames = [
        running(2, "t", 1), chunk(3, "t", 1, 0, "Hel"), chunk(4, "t", 1, 1, "lo"),
        chunk(4, "t", 1, 1, "lo"), running(5, "t", 2), chunk(6, "t", 1, 2, "stale"),
        chunk(7, "t", 2, 0, "Bye"), chunk(8, "u", 3, 1, "!"), chunk(9, "u", 3, 0, "Hi"),
        chunk(1, "t", 9, 0, "old"),
    ]  # fmt: skip
    script = f"""(async () => {{
        const {{ NoobleClient }} = {CLIENT};
        // A token that never comes: no socket opens, the frames below are all it sees.
        const never = () => new Promise(() => {{}});
        const chat = new NoobleClient({{ token: never }}).connect("s", {{ afterSeq: 1 }});
        const texts = [];
        chat.on("text", (t) => texts.push([t.task_id, t.attempt, t.text]));
        for (const frame of {json.dumps(frames)}) chat.receive(frame);
        return {{ texts, lastSeq: chat.lastSeq, snapshot: chat.snapshot() }};
    }})()"""
    async with open_tab(browser, f"{edge.url}/health/live") as page:
        result = await page.eval(script, await_promise=True)
    assert result["texts"] == [
        ["t", 1, ""], ["t", 1, "Hel"], ["t", 1, "Hello"], ["t", 2, ""], ["t", 2, "Bye"],
        ["u", 3, ""], ["u", 3, "!"], ["u", 3, "Hi!"],
    ]  # fmt: skip
    assert result["lastSeq"] == 9
    assert result["snapshot"]["afterSeq"] == 9
    assert result["snapshot"]["answers"]["t"]["text"] == "Bye"


async def test_the_client_reconnects_after_an_edge_restart_and_resumes_without_gap(
    browser, stack, edge
):
    script = """(async () => {
        const { NoobleClient } = await import(new URL('/static/nooble-client.js', location.href));
        const token = async () => (await (await fetch('/api/dev/token')).json()).token;
        const client = new NoobleClient({ token });
        const { session_id } = await client.startChat('demo');
        const chat = client.connect(session_id, { backoffMs: 100, maxBackoffMs: 500 });
        window.seen = { seqs: [], states: [], readies: [], answers: [] };
        chat.on('*', (f) => { if (f.seq) window.seen.seqs.push(f.seq); });
        chat.on('state', (s) => window.seen.states.push(s));
        chat.on('session.ready', (d) => window.seen.readies.push(d));
        chat.on('chat.response', (d) => window.seen.answers.push(d.content));
        window.chat = chat;
        await chat.send('one');
        return true;
    })()"""
    async with open_tab(browser, f"{edge.url}/health/live") as page:
        await page.eval(script, await_promise=True)
        await page.wait_for("window.seen.answers.length === 1", "the first answer")
        before = await page.eval("window.chat.lastSeq")
        port = edge.port
        await edge.stop()  # every socket closes with 1012: the server is restarting
        await page.wait_for(
            "window.seen.states.some(s => s.state === 'reconnecting')", "reconnecting"
        )
        restarted = dev_edge(stack, port)
        await restarted.start()
        try:
            await page.wait_for("window.seen.readies.length === 2", "the resumed socket")
            await page.eval("window.chat.send('two').then(() => true)", await_promise=True)
            await page.wait_for("window.seen.answers.length === 2", "the second answer")
            seen = await page.eval("window.seen")
            await page.eval("window.chat.close(); true")
        finally:
            await restarted.stop()
    assert seen["answers"] == ["[Demo] You said: one", "[Demo] You said: two"]
    assert seen["readies"][1]["after_seq"] == before  # resumed where it was
    assert seen["seqs"] == sorted(set(seen["seqs"]))  # no event twice, in order
    reasons = [s["reason"] for s in seen["states"] if s["state"] == "reconnecting"]
    assert reasons[0] == "the server is restarting; reconnecting"
    assert not any(re.search(r"\b\d{4}\b", s["reason"]) for s in seen["states"])  # words only


LINK = ' rel="noopener noreferrer" target="_blank"'
MARKDOWN = "await import(new URL('/static/markdown.js', location.href))"


@pytest.mark.parametrize(
    ("source", "html"),
    [
        ("<img src=x onerror=alert(1)>", "<p>&lt;img src=x onerror=alert(1)&gt;</p>"),
        ("**b**, *i*, `<b>`", "<p><strong>b</strong>, <em>i</em>, <code>&lt;b&gt;</code></p>"),
        ("[ok](https://e.com/?a=1&b=2)", f'<p><a href="https://e.com/?a=1&amp;b=2"{LINK}>ok</a></p>'),
        ("[no](javascript:alert(1))", "<p>[no](javascript:alert(1))</p>"),
        ('[q](https://e.com/"onclick="x)', f'<p><a href="https://e.com/&quot;onclick=&quot;x"{LINK}>q</a></p>'),
        ("- a\n- b", "<ul><li>a</li><li>b</li></ul>"),
        ("1. a\n2. b", "<ol><li>a</li><li>b</li></ol>"),
        ("# T\n\nx\ny", "<h3>T</h3><p>x<br>y</p>"),
        ("```\n**no** <i>\n\nx\n```", "<pre><code>**no** &lt;i&gt;\n\nx</code></pre>"),
        ("a\u0000 0\u0000", "<p>a 0</p>"),
    ],
)  # fmt: skip
async def test_markdown_renders_a_few_forms_and_never_markup_of_its_own(
    browser, edge, source, html
):
    script = f"(async () => ({MARKDOWN}).renderMarkdown({json.dumps(source)}))()"
    async with open_tab(browser, f"{edge.url}/health/live") as page:
        assert await page.eval(script, await_promise=True) == html


async def test_the_client_refreshes_its_token_before_it_expires(browser, stack):
    settings = stack.settings.model_copy(
        # The warning comes at once (7 s before an 8 s token ends): 7 s to fetch a token and
        # refresh in, which a loaded machine cannot make race the first token's expiry.
        update={"edge_port": 0, "jwt_token_ttl": 8.0, "token_refresh_warning": 7.0}
    )
    edge = Edge(settings, stack.nc, stack.subjects, dev_token_route=True)
    await edge.start()
    script = """(async () => {
        const { NoobleClient } = await import(new URL('/static/nooble-client.js', location.href));
        window.seen = { asked: [], states: [], refreshed: [] };
        const token = async (refresh) => {
          window.seen.asked.push(refresh);
          return (await (await fetch('/api/dev/token')).json()).token;
        };
        const client = new NoobleClient({ token });
        const { session_id } = await client.startChat('demo');
        window.chat = client.connect(session_id);
        window.chat.on('state', (s) => window.seen.states.push(s.state));
        window.chat.on('auth.refreshed', (d) => window.seen.refreshed.push(d.expires_at));
        window.firstExpiry = Date.now() + 8000;
        return true;
    })()"""
    try:
        async with open_tab(browser, f"{edge.url}/health/live") as page:
            await page.eval(script, await_promise=True)
            await page.wait_for("window.seen.refreshed.length >= 1", "a refreshed token")
            # Past the first token's expiry, the same socket still serves a chat.
            await page.wait_for("Date.now() > window.firstExpiry + 500", "the first token expired")
            answer = await page.eval(
                "new Promise(r => { window.chat.on('chat.response', d => r(d.content));"
                " window.chat.send('still here'); })",
                await_promise=True,
            )
            seen = await page.eval("window.seen")
            await page.eval("window.chat.close(); true")
    finally:
        await edge.stop()
    assert answer == "[Demo] You said: still here"
    assert True in seen["asked"]  # asked for a new token, not the cached one
    assert seen["states"][:2] == ["connecting", "live"]
    assert "reconnecting" not in seen["states"]  # never dropped: refreshed in place
