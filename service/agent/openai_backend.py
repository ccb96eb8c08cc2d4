"""An execution handler backed by any OpenAI-compatible Chat Completions server, streamed (SSE).

One attempt is one `POST <base>/chat/completions` with `stream: true`. The request is built from
the agent config that travels with the task:

    model        <- ORCH_AGENT_OPENAI_MODEL, else agent.model.name
    temperature  <- agent.model.temperature
    max_tokens   <- agent.model.max_tokens
    messages     <- system prompt (if any), history, the current message, input rounds
    any key of agent.model.extra (e.g. tools, top_p) is passed through

Each `data:` event's `choices[0].delta.content` is yielded as text (the SDK coalesces it);
`delta.tool_calls` fragments are assembled by their `index` and yielded as tool calls when the
choice finishes (`finish_reason`) or the stream ends. Failures map to typed errors: HTTP 429, 5xx,
connection failures and an error event inside the stream are `upstream_unavailable`, silence
longer than `ORCH_AGENT_OPENAI_READ_TIMEOUT` or a completion longer than `ORCH_AGENT_OPENAI_TIMEOUT`
is `timeout` (both retried by the orchestrator); other 4xx are final (`codecs/errors.py`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from loguru import logger

from orchestrator.codecs.errors import (
    ActionTimeout,
    UpstreamUnavailable,
    error_for_upstream_status,
)
from orchestrator.codecs.execution_messages import ExecutionRequest
from orchestrator.service.agent.parts import ToolCall, Yielded
from orchestrator.service.runtime.settings import AgentSettings

DONE = "[DONE]"
ERROR_BODY_MAX = 4096


def chat_body(request: ExecutionRequest, model_name: str = "") -> dict[str, Any]:
    """The Chat Completions request body for one execution request (`model_name` overrides the
    agent config's model name when set)."""
    model = request.agent.model
    messages: list[dict[str, str]] = []
    if model.system_prompt:
        messages.append({"role": "system", "content": model.system_prompt})
    messages += [{"role": turn.role.value, "content": turn.content} for turn in request.history]
    messages.append({"role": "user", "content": request.content})
    for round_ in request.inputs:
        # The question this task asked earlier, and the user's answer to it.
        messages.append({"role": "assistant", "content": round_.request.prompt})
        messages.append({"role": "user", "content": round_.response})
    return {
        **model.extra,
        "model": model_name or model.name,
        "messages": messages,
        "temperature": model.temperature,
        "max_tokens": model.max_tokens,
        "stream": True,
    }


async def sse_data(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The `data` of each server-sent event, multi-line data joined with newlines."""
    data: list[str] = []
    async for raw in content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment, e.g. a keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


@dataclass
class _ToolCallDraft:
    """A tool call whose pieces arrive over several deltas."""

    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def finish(self, position: int) -> ToolCall:
        text = "".join(self.arguments).strip() or "{}"
        try:
            arguments = json.loads(text)
        except json.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            # Another attempt may well produce valid JSON: a retryable failure.
            raise UpstreamUnavailable(f"model gave tool {self.name!r} arguments that are not a "
                                      "JSON object")  # fmt: skip
        return ToolCall(self.call_id or f"call_{position}", self.name, arguments)


class OpenAIBackend:
    """The handler: `async for part in backend(request)`; `close()` once at the end."""

    def __init__(self, settings: AgentSettings) -> None:
        self._url = settings.openai_base_url.rstrip("/") + "/chat/completions"
        self._model = settings.openai_model
        self._headers = {"Accept": "text/event-stream"}
        if settings.openai_api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.openai_api_key.get_secret_value()}"
        self._timeout = aiohttp.ClientTimeout(
            total=settings.openai_timeout,
            sock_connect=settings.openai_connect_timeout,
            sock_read=settings.openai_read_timeout,
        )
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __call__(self, request: ExecutionRequest) -> AsyncIterator[Yielded]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(
                self._url, json=chat_body(request, self._model), headers=self._headers
            ) as response:
                if response.status != 200:
                    raise await _http_error(response)
                async for part in _parts(sse_data(response.content)):
                    yield part
        except TimeoutError:
            raise ActionTimeout(
                f"model server was silent too long at {self._url}", {"url": self._url}
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"model server failed: {exc!r}", {"url": self._url}) from None


async def _parts(events: AsyncIterator[str]) -> AsyncIterator[Yielded]:
    drafts: dict[int, _ToolCallDraft] = {}
    async for data in events:
        if data == DONE:
            break
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise UpstreamUnavailable("model server sent an event that is not JSON") from None
        if "error" in chunk:
            raise UpstreamUnavailable(f"model server error: {_message_of(chunk)}")
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 is not asked for; only the first choice is the answer
            delta = choice.get("delta") or {}
            if delta.get("content"):
                yield delta["content"]
            for fragment in delta.get("tool_calls") or []:
                draft = drafts.setdefault(fragment.get("index", 0), _ToolCallDraft())
                draft.call_id = fragment.get("id") or draft.call_id
                function = fragment.get("function") or {}
                draft.name = function.get("name") or draft.name
                draft.arguments.append(function.get("arguments") or "")
            if choice.get("finish_reason"):
                for call in _finished(drafts):
                    yield call
    for call in _finished(drafts):
        yield call


def _finished(drafts: dict[int, _ToolCallDraft]) -> list[ToolCall]:
    calls = [drafts[i].finish(i) for i in sorted(drafts)]
    drafts.clear()
    return calls


async def _http_error(response: aiohttp.ClientResponse) -> Exception:
    body = (await response.content.read(ERROR_BODY_MAX)).decode(errors="replace")
    try:
        message = _message_of(json.loads(body))
    except (json.JSONDecodeError, AttributeError):
        message = body.strip()[:200] or response.reason or ""
    logger.warning("model server answered HTTP {}: {}", response.status, message)
    return error_for_upstream_status(
        response.status, f"model server answered HTTP {response.status}: {message}"
    )


def _message_of(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or error)
    return str(error)
