"""Connection-level limits of the edge: a process-wide cap with a clear 503, and one-line logs
for malformed or oversized requests.

The header read timeout and the header size cap are aiohttp's own (`keepalive_timeout`, which
aiohttp arms when a connection opens and after each response, and `max_line_size` /
`max_field_size`), passed in by `handler_limits`; this module decides, per accepted socket,
whether aiohttp gets it at all.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger

from orchestrator.codecs.errors import Unavailable
from orchestrator.codecs.wire import encode
from orchestrator.service.runtime.settings import OrchestratorSettings

_REFUSAL_BODY = encode(Unavailable("edge at its connection limit; retry shortly").envelope())
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


def handler_limits(settings: OrchestratorSettings) -> dict[str, float | int]:
    """aiohttp request-handler options: header read timeout and header size caps."""
    return {
        # Armed at accept and after each response, cancelled only by a complete request: a
        # client trickling header lines (slowloris) is cut off after this many seconds.
        "keepalive_timeout": settings.edge_header_timeout,
        "max_line_size": settings.edge_max_header_bytes,
        "max_field_size": settings.edge_max_header_bytes,
    }


def connection_cap(settings: OrchestratorSettings) -> int:
    """`ORCH_EDGE_MAX_CONNECTIONS`, lowered to stay `ORCH_EDGE_FD_RESERVE` below the fd limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = settings.edge_max_connections
    if soft != resource.RLIM_INFINITY and cap > soft - settings.edge_fd_reserve:
        lowered = max(1, soft - settings.edge_fd_reserve)
        logger.warning(
            "ORCH_EDGE_MAX_CONNECTIONS={} exceeds the open-file limit {} minus "
            "ORCH_EDGE_FD_RESERVE={}: using {}",
            cap, soft, settings.edge_fd_reserve, lowered,
        )  # fmt: skip
        cap = lowered
    return cap


class _Refuse(asyncio.Protocol):
    """Answers 503 at once and closes: the socket never reaches aiohttp."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(REFUSAL)
        transport.close()


class ConnectionGuard:
    """The listening socket's protocol factory: aiohttp's handler while below `cap`, else 503."""

    def __init__(self, server: web.Server, cap: int, on_refused: Callable[[], None]) -> None:
        self._server = server
        self.cap = cap
        self._on_refused = on_refused
        self.refused = 0

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._server.connections) >= self.cap:
            self.refused += 1
            self._on_refused()
            return _Refuse()
        return self._server()


class OneLineParseErrors(logging.Filter):
    """aiohttp logs each malformed request (e.g. oversized headers) with a full traceback, at
    ERROR, for anyone on the network to trigger: make it one WARNING line without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "refused a malformed request from %s: %s"
            record.args = (*(record.args or ("?",))[:1], f"{exc.code} {exc.message}")
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install_log_filter() -> None:
    """Once per process, on aiohttp's server logger."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, OneLineParseErrors) for f in server_log.filters):
        server_log.addFilter(OneLineParseErrors())
