"""A stand-in for an OpenAI-compatible model server (OpenAI, vLLM, Ollama, llama.cpp server), as
a separate local process: `python tests/openai_stub_server.py` prints `listening on <url>`.

It speaks the Chat Completions streaming protocol as those servers do: `POST /v1/chat/completions`
with `stream: true` is answered `200 text/event-stream` with chunked transfer encoding, one
`data: {chat.completion.chunk}` event per token (the first delta carries the role), tool calls as
`delta.tool_calls` fragments (id, type and name first, then the arguments in pieces), a last
chunk with `finish_reason`, then `data: [DONE]`. Failures use the OpenAI error body
`{"error": {"message", "type", "param", "code"}}`. `GET /requests` returns every request it got
(body and Authorization header), so tests can check what a client sent.
`support.programs.StubProcess` runs it.

What it answers depends on the last user message:

| message        | answer                                                                  |
|----------------|-------------------------------------------------------------------------|
| `tool`         | a text token, then two parallel tool calls streamed as fragments          |
| `status N`     | HTTP N with an error body (e.g. 429, 500, 400, 401, 404)                  |
| `stall`        | the role delta, then nothing (the connection stays open)                  |
| `broken`       | two tokens, then an error event inside the stream                        |
| anything else  | `You said: <message>` one word per event                                 |
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from aiohttp import web
from support.child_main import until_terminated

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               429: "rate_limit_error"}  # fmt: skip


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class StubServer:
    """The model server's state: the requests it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(
            {"body": body, "authorization": request.headers.get("Authorization", "")}
        )
        model = body.get("model", "")
        if not body.get("stream"):
            return web.json_response(error_body(400, "this stub streams only"), status=400)
        last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        command, _, arg = last.partition(" ")
        if command == "status":
            status = int(arg)
            return web.json_response(error_body(status, f"stub failure {status}"), status=status)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(chunk(model, {"role": "assistant", "content": ""}))
        if command == "stall":
            await asyncio.Event().wait()
        if command == "tool":
            await self._tool_calls(response, model)
        elif command == "broken":
            for word in ("Half", " an"):
                await response.write(chunk(model, {"content": word}))
            await response.write(b"data: " + json.dumps(error_body(500, "overloaded")).encode())
            await response.write(b"\n\n")
            await response.write_eof()
            return response
        else:
            words = f"You said: {last}".split(" ")
            for i, word in enumerate(words):
                await response.write(chunk(model, {"content": word if i == 0 else " " + word}))
            await response.write(chunk(model, {}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _tool_calls(self, response: web.StreamResponse, model: str) -> None:
        await response.write(chunk(model, {"content": "Checking."}))
        calls = [("call_w", "get_weather", '{"city": "Paris"}'), ("call_t", "get_time", "{}")]
        for index, (call_id, name, _) in enumerate(calls):
            head = {"index": index, "id": call_id, "type": "function",
                    "function": {"name": name, "arguments": ""}}  # fmt: skip
            await response.write(chunk(model, {"tool_calls": [head]}))
        for index, (_, _, arguments) in enumerate(calls):
            for start in range(0, len(arguments), 5):
                piece = {"index": index, "function": {"arguments": arguments[start : start + 5]}}
                await response.write(chunk(model, {"tool_calls": [piece]}))
        await response.write(chunk(model, {}, "tool_calls"))

    async def recorded(self, _request: web.Request) -> web.Response:
        return web.json_response(self.requests)


async def main() -> None:
    stub = StubServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", stub.completions)
    app.router.add_get("/requests", stub.recorded)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}/v1", flush=True)
    try:
        await until_terminated()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
