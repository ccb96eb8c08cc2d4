"""OpenAPI 3.1 document of the edge's HTTP API, generated from a route table and the codecs.

`ROUTES` names every HTTP route the edge serves under `/api` and `/health`: its method and path,
the DomainAction it sends (whose reply Struct is the success body), the Structs its body and query
decode into, and its success status. A test compares `ROUTES` with the routes of a running edge
(`UNDOCUMENTED` lists the few left out on purpose and why), so a new route cannot go undocumented;
another checks docs/openapi.json against `render()` and the official OpenAPI 3.1 schema.
`python -m orchestrator.service.edge.openapi_doc docs/openapi.json` writes the file; the edge
serves the same document at `GET /api/openapi.json`.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from orchestrator.codecs.actions import (
    ACTIONS,
    CancelTask,
    CloseSession,
    GetSession,
    GetSessionEvents,
    GetTask,
    ListAgents,
    ListSessions,
    StartSession,
)
from orchestrator.codecs.errors import TRANSPORT, ErrorCode, ErrorEnvelope
from orchestrator.codecs.frames import (
    ChatMessageData,
    ChatStartReply,
    RespondBody,
    ServerFrame,
    WebSocketMessageType,
)
from orchestrator.codecs.schema import normalise

VERSION = "0.1.0"
_REF = "#/components/schemas/{name}"
OPENAPI_PATH = "/api/openapi.json"

# Routes of a running edge that this document leaves out, and why.
UNDOCUMENTED: dict[str, str] = {
    "/": "the chat page (HTML)",
    "/static": "the page's static files",
    "/ws/chat/{session_id}": "the WebSocket: its frames are in docs/asyncapi.json (ws.chat)",
    "/api/dev/token": "`orchestrator dev` only, loopback only",
    "/metrics": "Prometheus text, only with ORCH_METRICS_PROMETHEUS",
}

# The errors an authenticated route may answer with: every code of `codecs.errors.TRANSPORT`
# but `internal` (the edge answers no 500: the schemathesis test checks it) and
# `upstream_unavailable` (its status, 503, is `unavailable`'s: one response per status).
_API_ERRORS = tuple(
    code for code in ErrorCode if code not in (ErrorCode.INTERNAL, ErrorCode.UPSTREAM_UNAVAILABLE)
)


@dataclass(frozen=True, slots=True)
class RouteDoc:
    """One HTTP route as documented."""

    method: str
    path: str
    operation_id: str
    summary: str
    action: str | None = None  # the DomainAction it sends; its reply is the success body
    body: Any = None  # the Struct the JSON body decodes into
    query: Any = None  # the Struct whose fields (less the path's) are the query parameters
    status: int = 200
    reply: Any = None  # the success body when it is not the action's reply
    auth: bool = True
    description: str = ""
    fields: tuple[str, ...] = ()  # when set, only these fields of `query` are parameters


ROUTES: tuple[RouteDoc, ...] = (
    RouteDoc("POST", "/api/chat/start", "startSession", "Start a chat session",
             action="session.start", body=StartSession, status=201, reply=ChatStartReply,
             description="The new session and the URL of its WebSocket (append `?token=`)."),
    RouteDoc("GET", "/api/chat/sessions", "listSessions", "List the caller's sessions",
             action="session.list", query=ListSessions),
    RouteDoc("GET", "/api/chat/sessions/{session_id}", "getSession", "Read a session",
             action="session.get", query=GetSession),
    RouteDoc("DELETE", "/api/chat/sessions/{session_id}", "closeSession", "Close a session",
             action="session.close", query=CloseSession),
    RouteDoc("GET", "/api/chat/sessions/{session_id}/events", "getSessionEvents",
             "Read a session's events after a sequence number", action="session.events",
             query=GetSessionEvents),
    RouteDoc("POST", "/api/chat/sessions/{session_id}/messages", "sendMessage",
             "Send a user message", action="chat.send", body=ChatMessageData, query=GetSession,
             status=202,
             description="Answers once the message and its task are durably stored. A retry "
             "with the same `Idempotency-Key` answers the first send's task."),
    RouteDoc("GET", "/api/tasks/{task_id}", "getTask", "Read a task", action="task.get",
             query=GetTask),
    RouteDoc("POST", "/api/tasks/{task_id}/cancel", "cancelTask", "Cancel a task",
             action="task.cancel", query=CancelTask),
    RouteDoc("POST", "/api/tasks/{task_id}/respond", "respondTask",
             "Answer a task waiting for input", action="task.respond", body=RespondBody,
             query=GetTask),
    RouteDoc("GET", "/api/agents", "listAgents", "List the agents the caller may use",
             action="agent.list", query=ListAgents),
    RouteDoc("GET", "/api/sessions/{session_id}/stream", "streamSession",
             "A session's events as Server-Sent Events", query=GetSessionEvents,
             fields=("session_id", "after_seq"),
             description="`text/event-stream`: `id:` is the event's seq, `event:` the frame "
             "type, `data:` the WebSocket frame of the same name (docs/edge.md). `Last-Event-ID` "
             "(or `after_seq`) resumes after an event; 204 for a closed session with nothing "
             "after the resume point."),
    RouteDoc("GET", "/health/live", "live", "Liveness: the process runs", auth=False),
    RouteDoc("GET", "/health/ready", "ready",
             "Readiness: NATS connected, JetStream answering, no background loop failing",
             auth=False),
    RouteDoc("GET", OPENAPI_PATH, "openapi", "This document", auth=False),
)  # fmt: skip


# One Server-Sent Event as OpenAPI tools read a `text/event-stream` schema: its fields.
_SSE_EVENT = {
    "type": "object",
    "description": "One event; comment lines (`: heartbeat`) keep the stream alive.",
    "properties": {
        "id": {"type": "string", "description": "The event's seq (session events only)."},
        "event": {"type": "string", "enum": [t.value for t in WebSocketMessageType]},
        "data": {
            "type": "string",
            "description": "The WebSocket frame of the same type, as JSON.",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": _REF.format(name="ServerFrame")},
        },
    },
    "required": ["data"],
}


def _error_response(code: ErrorCode) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": f"`{code.value}`",
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="ErrorEnvelope")}}},
    }
    if code is ErrorCode.RATE_LIMITED:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until the caller's bucket has a token again.",
                "schema": {"type": "string"},
            }
        }
    return response


def _parameters(route: RouteDoc, properties: dict[str, Any], required: set[str]) -> list:
    """Path parameters from the path, query parameters from the rest of `route.query`."""
    params = []
    for name, schema in properties.items():
        where = "path" if "{" + name + "}" in route.path else "query"
        param = {"name": name, "in": where, "required": where == "path" or name in required}
        param["schema"] = schema
        params.append(param)
    if route.action == "chat.send":
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Makes a retried send answer the first one's task.",
                "schema": {"type": "string", "maxLength": 256},
            }
        )
    if route.operation_id == "streamSession":
        params += [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "The last `id:` received; wins over `after_seq`.",
                "schema": {"type": "string"},
            },
            {
                "name": "token",
                "in": "query",
                "required": False,
                "description": "The JWT, for `EventSource` (it cannot set headers).",
                "schema": {"type": "string"},
            },
        ]
    return params


def _success(route: RouteDoc, schemas: dict[Any, Any]) -> dict[str, Any]:
    if route.operation_id == "streamSession":
        return {
            "200": {
                "description": "The event stream.",
                "content": {"text/event-stream": {"schema": _SSE_EVENT}},
            },
            "204": {"description": "A closed session with nothing after the resume point."},
        }
    if route.operation_id in ("live", "ready"):
        schema = {"type": "object", "properties": {"status": {"type": "string"}}}
    elif route.operation_id == "openapi":
        schema = {"type": "object", "description": "This OpenAPI document."}
    else:
        schema = schemas[_reply_type(route)]
    return {
        str(route.status): {
            "description": route.summary,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _reply_type(route: RouteDoc) -> Any:
    return route.reply if route.reply is not None else ACTIONS[route.action].reply


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document as a dict."""
    types: list[Any] = [ErrorEnvelope, ServerFrame]
    for route in ROUTES:
        types += [t for t in (route.body, route.query) if t is not None]
        if route.action is not None:
            types.append(_reply_type(route))
    generated, components = msgspec.json.schema_components(types, ref_template=_REF)
    schemas = dict(zip(types, generated, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": [route.path.split("/")[2] if route.path.startswith("/api/") else "health"],
        }
        if route.description:
            op["description"] = route.description
        if route.action is not None:
            spec = ACTIONS[route.action]
            op["description"] = (
                f"{route.description}\n\n" if route.description else ""
            ) + f"DomainAction `{spec.action_type}`, permission `{spec.permission}`."
        params: list[Any] = []
        if route.query is not None:
            fields = components[route.query.__name__]
            properties = {
                name: schema
                for name, schema in fields.get("properties", {}).items()
                if not route.fields or name in route.fields
            }
            params = _parameters(route, properties, set(fields.get("required", [])))
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schemas[route.body]}},
            }
        responses = _success(route, schemas)
        if route.auth:
            op["security"] = [{"bearer": []}]
            if route.operation_id == "streamSession":
                op["security"].append({"queryToken": []})
            for code in _API_ERRORS:
                responses.setdefault(str(TRANSPORT[code].http_status), _error_response(code))
        elif route.operation_id == "ready":
            responses["503"] = _error_response(ErrorCode.UNAVAILABLE)
        op["responses"] = dict(sorted(responses.items()))
        paths.setdefault(route.path, {})[route.method.lower()] = op
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "Nooble4 Agent Orchestrator edge",
            "version": VERSION,
            "description": inspect.cleandoc(
                """The edge's HTTP API (docs/edge.md). Every failure is the error envelope
                `{"error": {code, message, details?}}` with the status of its code; every
                response carries `X-Correlation-ID`. The WebSocket `/ws/chat/{session_id}` and
                the NATS channels are in docs/asyncapi.json."""
            ),
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT with `sub` (user), `tenant_id` and `permissions`.",
                },
                "queryToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "The same JWT as a query parameter (Server-Sent Events).",
                },
            },
        },
    }
    return normalise(doc)


def render() -> str:
    """The document as committed: sorted keys, two-space indent."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


class OpenApiRoute:
    """`GET /api/openapi.json`: the document, rendered once."""

    def __init__(self) -> None:
        self._body = render().encode()

    def routes(self) -> list[web.RouteDef]:
        return [web.get(OPENAPI_PATH, self.serve)]

    async def serve(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._body, content_type="application/json")


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/openapi.json")
    target.write_text(render())
    print(target)
