"""The HTTP API: each route verifies the caller, decodes strictly, and sends one DomainAction."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import msgspec
from aiohttp import web

from orchestrator.codecs.actions import (
    CancelTask,
    CloseSession,
    GetSession,
    GetSessionEvents,
    GetTask,
    ListAgents,
    ListSessions,
    RespondTask,
    SendChat,
    StartSession,
)
from orchestrator.codecs.errors import ValidationFailed
from orchestrator.codecs.frames import ChatMessageData, ChatStartReply, RespondBody
from orchestrator.codecs.types import IDENTIFIER_PATTERN
from orchestrator.codecs.wire import decode, encode
from orchestrator.service.actions.context import ExecutionContext
from orchestrator.service.edge.auth import bearer_token
from orchestrator.service.edge.edge_deps import EdgeDeps
from orchestrator.service.edge.middleware import CORRELATION_HEADER
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.store.ids import new_id

IDEMPOTENCY_HEADER = "Idempotency-Key"
_CORRELATION = re.compile(IDENTIFIER_PATTERN)


def convert(tp: Any, fields: dict[str, Any]) -> Any:
    """Build a payload from path and query strings, validated like a decoded body."""
    try:
        return msgspec.convert(fields, tp, strict=False)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(str(exc)) from None


def ws_url(settings: OrchestratorSettings, request: web.Request, session_id: str) -> str:
    """Where the session's WebSocket is; the client appends `?token=...`."""
    base = settings.edge_public_url or f"{request.scheme}://{request.host}"
    base = base.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{base}/ws/chat/{session_id}"


class Api:
    """Routes under `/api`: chat sessions, messages, events and tasks."""

    def __init__(self, deps: EdgeDeps) -> None:
        self._deps = deps
        self._bus = deps.bus
        self._settings = deps.settings

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/chat/start", self.start),
            web.get("/api/chat/sessions", self.list_sessions),
            web.get("/api/chat/sessions/{session_id}", self.get_session),
            web.delete("/api/chat/sessions/{session_id}", self.close_session),
            web.get("/api/chat/sessions/{session_id}/events", self.events),
            web.post("/api/chat/sessions/{session_id}/messages", self.send),
            web.get("/api/tasks/{task_id}", self.get_task),
            web.post("/api/tasks/{task_id}/cancel", self.cancel_task),
            web.post("/api/tasks/{task_id}/respond", self.respond_task),
            web.get("/api/agents", self.list_agents),
        ]

    def identify(self, request: web.Request) -> ExecutionContext:
        """The caller's context from its bearer token, after the per-user rate limit."""
        ctx = self._deps.verifier.verify(bearer_token(request)).ctx
        self._deps.take_request(ctx)
        correlation = request.headers.get(CORRELATION_HEADER, "")
        if not _CORRELATION.match(correlation):
            correlation = new_id()
        return replace(ctx, correlation_id=correlation)

    async def _call(
        self, action_type: str, ctx: ExecutionContext, payload: Any, status: int = 200
    ) -> web.Response:
        reply = await self._bus.call(action_type, ctx, payload)
        return _json(reply, ctx, status)

    async def start(self, request: web.Request) -> web.Response:
        ctx = self.identify(request)
        payload = decode(await request.read(), StartSession)
        view = await self._bus.call("session.start", ctx, payload)
        reply = ChatStartReply(
            session_id=view.session_id,
            expires_at=view.expires_at,
            ws_url=ws_url(self._settings, request, view.session_id),
            session=view,
        )
        return _json(reply, ctx, 201)

    async def list_sessions(self, request: web.Request) -> web.Response:
        ctx = self.identify(request)
        return await self._call("session.list", ctx, convert(ListSessions, dict(request.query)))

    async def get_session(self, request: web.Request) -> web.Response:
        ctx = self.identify(request)
        return await self._call("session.get", ctx, convert(GetSession, dict(request.match_info)))

    async def close_session(self, request: web.Request) -> web.Response:
        ctx = self.identify(request)
        fields = {**request.query, **request.match_info}
        return await self._call("session.close", ctx, convert(CloseSession, fields))

    async def events(self, request: web.Request) -> web.Response:
        ctx = self.identify(request)
        fields = {**request.query, **request.match_info}
        return await self._call("session.events", ctx, convert(GetSessionEvents, fields))

    async def send(self, request: web.Request) -> web.Response:
        ctx = self.identify(request)
        body = decode(await request.read(), ChatMessageData)
        session_id = convert(GetSession, dict(request.match_info)).session_id
        payload = SendChat(session_id=session_id, content=body.content)
        # A client's Idempotency-Key makes a retried POST return the first one's task.
        key = request.headers.get(IDEMPOTENCY_HEADER) or None
        reply = await self._bus.call("chat.send", ctx, payload, client_id=key)
        return _json(reply, ctx, 202)

    async def get_task(self, request: web.Request) -> web.Response:
        ctx = self.identify(request)
        return await self._call("task.get", ctx, convert(GetTask, dict(request.match_info)))

    async def cancel_task(self, request: web.Request) -> web.Response:
        ctx = self.identify(request)
        return await self._call("task.cancel", ctx, convert(CancelTask, dict(request.match_info)))

    async def respond_task(self, request: web.Request) -> web.Response:
        ctx = self.identify(request)
        body = decode(await request.read(), RespondBody)
        task_id = convert(GetTask, dict(request.match_info)).task_id
        return await self._call(
            "task.respond", ctx, RespondTask(task_id=task_id, content=body.content)
        )

    async def list_agents(self, request: web.Request) -> web.Response:
        ctx = self.identify(request)
        return await self._call("agent.list", ctx, convert(ListAgents, dict(request.query)))


def _json(reply: Any, ctx: ExecutionContext, status: int) -> web.Response:
    response = web.Response(body=encode(reply), status=status, content_type="application/json")
    response.headers[CORRELATION_HEADER] = ctx.correlation_id
    return response
