"""HTTP middlewares: every failure leaves as the one error envelope; CORS for known origins."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from loguru import logger

from orchestrator.codecs.errors import (
    Forbidden,
    InternalError,
    NotFound,
    OrchestratorError,
    PayloadTooLarge,
    RateLimited,
    ValidationFailed,
    transport_for,
)
from orchestrator.codecs.wire import encode

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CORRELATION_HEADER = "X-Correlation-ID"
_ALLOW_HEADERS = f"Authorization, Content-Type, Idempotency-Key, {CORRELATION_HEADER}"
_ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"


def error_response(error: OrchestratorError) -> web.Response:
    """The error envelope with the status the transport table gives its code."""
    status = transport_for(error.code).http_status
    response = web.Response(
        body=encode(error.envelope()), status=status, content_type="application/json"
    )
    if isinstance(error, RateLimited) and error.details and "retry_after" in error.details:
        response.headers["Retry-After"] = str(max(1, round(error.details["retry_after"])))
    return response


def _from_http(exc: web.HTTPException) -> OrchestratorError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("request body too large")
    if isinstance(exc, web.HTTPNotFound | web.HTTPMethodNotAllowed):
        return NotFound("no such resource")
    if exc.status < 500:
        return ValidationFailed(exc.reason)
    return InternalError(exc.reason)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Typed errors, aiohttp's own HTTP errors and surprises all leave as an error envelope."""
    try:
        return await handler(request)
    except OrchestratorError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http(exc))
    except Exception:  # noqa: BLE001 - outermost boundary of one HTTP request
        logger.exception("{} {} failed unexpectedly", request.method, request.path)
        return error_response(InternalError("internal error"))


CORS_HEADERS = web.RequestKey("cors_headers", dict[str, str])


def cors_headers_for(origin: str) -> dict[str, str]:
    """The CORS headers of a response to a permitted `origin`."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": CORRELATION_HEADER,
    }


def cors_middleware(origins: list[str]) -> Callable:
    """Allow exactly `origins` (or any, if it holds `*`); answers preflights itself."""
    allowed = frozenset(origins)
    any_origin = "*" in allowed

    def permitted(origin: str | None) -> bool:
        return origin is not None and (any_origin or origin in allowed)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if preflight:
            if not permitted(origin):
                return error_response(Forbidden("origin not allowed"))
            response: web.StreamResponse = web.Response(status=204)
            response.headers.update(
                {
                    "Access-Control-Allow-Methods": _ALLOW_METHODS,
                    "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                    "Access-Control-Max-Age": "600",
                }
            )
        else:
            # A streaming handler prepares its response itself, before this sees it: it copies
            # these headers first (`CORS_HEADERS`).
            request[CORS_HEADERS] = cors_headers_for(origin) if permitted(origin) else {}
            response = await handler(request)
        if permitted(origin) and not response.prepared:
            response.headers.update(cors_headers_for(origin))
            response.headers.add("Vary", "Origin")
        return response

    return cors


def websocket_origin_middleware(origins: list[str], same_origin: bool = False) -> Callable:
    """Refuse (403) a WebSocket upgrade from a page whose Origin is not in `origins`.

    Browsers always send Origin with a WebSocket, and a cross-site page would otherwise ride a
    token it obtained (CSWSH); clients that send no Origin are not browsers and pass.
    `same_origin` (dev) also admits the page this edge served itself, on whatever port.
    """
    allowed = frozenset(origins)

    def permitted(request: web.Request, origin: str) -> bool:
        if origin in allowed:
            return True
        return same_origin and origin.split("://", 1)[-1] == request.host

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if upgrade and origin is not None and not permitted(request, origin):
            return error_response(Forbidden("origin not allowed"))
        return await handler(request)

    return check_origin


# The page loads only its own script and style (no inline code), talks only to its own origin,
# and may not be framed: a strict policy costs it nothing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


async def security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every response (page, static file, API, error) carries them."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
