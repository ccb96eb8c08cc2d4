"""The one error envelope, its stable codes, and how each code maps onto every transport."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any, ClassVar, NamedTuple

import msgspec


class ErrorCode(StrEnum):
    """Stable machine codes; clients switch on these, never on messages."""

    VALIDATION_ERROR = "validation_error"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """What went wrong: a stable code, a message for people, optional structured details."""

    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorEnvelope(msgspec.Struct, frozen=True):
    """The body of every failed reply, HTTP error and WebSocket `error` frame."""

    error: ErrorBody


class Mapping(NamedTuple):
    """How one error code shows on each transport."""

    http_status: int
    ws_close_code: int


# The single table from code to transport. The NATS micro `Nats-Service-Error-Code` header carries
# the HTTP status (micro's own convention, e.g. "500"); WebSocket close codes are 4000 + status.
TRANSPORT: dict[ErrorCode, Mapping] = {
    ErrorCode.VALIDATION_ERROR: Mapping(400, 4400),
    ErrorCode.UNAUTHORIZED: Mapping(401, 4401),
    ErrorCode.FORBIDDEN: Mapping(403, 4403),
    ErrorCode.NOT_FOUND: Mapping(404, 4404),
    ErrorCode.CONFLICT: Mapping(409, 4409),
    ErrorCode.PAYLOAD_TOO_LARGE: Mapping(413, 4413),
    ErrorCode.RATE_LIMITED: Mapping(429, 4429),
    ErrorCode.TIMEOUT: Mapping(504, 4504),
    ErrorCode.UPSTREAM_UNAVAILABLE: Mapping(503, 4503),
    ErrorCode.UNAVAILABLE: Mapping(503, 4503),
    ErrorCode.INTERNAL: Mapping(500, 4500),
}


# Codes that may succeed on another attempt (or on another instance of the service); every other
# code describes the request itself, so repeating it would fail the same way.
RETRYABLE = frozenset(
    {ErrorCode.UPSTREAM_UNAVAILABLE, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.INTERNAL}
)


def transport_for(code: str) -> Mapping:
    """The transport mapping of a code; unknown codes map like `internal`."""
    try:
        return TRANSPORT[ErrorCode(code)]
    except ValueError:
        return TRANSPORT[ErrorCode.INTERNAL]


# A reply that carries only a status (a micro error from a service that sends no error envelope)
# gets the code of that status. Two codes share 503: such a reply comes from a service its caller
# called, so it is `upstream_unavailable`; `unavailable` (the orchestrator's own NATS or JetStream
# failing) is raised only by the process that saw the failure, and then travels in an envelope.
_CODE_OF_STATUS: dict[int, ErrorCode] = {
    mapping.http_status: code
    for code, mapping in TRANSPORT.items()
    if code is not ErrorCode.UNAVAILABLE
}


def code_for_status(status: int | str) -> ErrorCode:
    """The code of an error reply that names only its HTTP status; unknown statuses: `internal`."""
    try:
        return _CODE_OF_STATUS.get(int(status), ErrorCode.INTERNAL)
    except ValueError:
        return ErrorCode.INTERNAL


class OrchestratorError(Exception):
    """Base of every typed failure; raise anywhere, translated once per transport."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> ErrorBody:
        """The wire form of this error."""
        return ErrorBody(code=self.code.value, message=self.message, details=self.details)

    def envelope(self) -> ErrorEnvelope:
        return ErrorEnvelope(error=self.body())


def is_retryable(error: OrchestratorError) -> bool:
    """Whether another attempt of the same request could succeed."""
    return error.code in RETRYABLE


class ValidationFailed(OrchestratorError):
    code = ErrorCode.VALIDATION_ERROR


class Unauthorized(OrchestratorError):
    code = ErrorCode.UNAUTHORIZED


class Forbidden(OrchestratorError):
    code = ErrorCode.FORBIDDEN


class NotFound(OrchestratorError):
    code = ErrorCode.NOT_FOUND


class Conflict(OrchestratorError):
    code = ErrorCode.CONFLICT


class PayloadTooLarge(OrchestratorError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class RateLimited(OrchestratorError):
    code = ErrorCode.RATE_LIMITED


class ActionTimeout(OrchestratorError):
    code = ErrorCode.TIMEOUT


class UpstreamUnavailable(OrchestratorError):
    code = ErrorCode.UPSTREAM_UNAVAILABLE


class Unavailable(OrchestratorError):
    """A dependency of the orchestrator itself (NATS, JetStream) is not answering."""

    code = ErrorCode.UNAVAILABLE


class InternalError(OrchestratorError):
    code = ErrorCode.INTERNAL


class StartupFailed(RuntimeError):
    """The process cannot start; its message is the one line the command prints before exiting.

    Not a wire error: it never leaves the process. The message names the cause and the setting
    that changes it (e.g. `ORCH_EDGE_PORT`).
    """


class PortInUse(StartupFailed):
    """Something else already listens on `host:port`."""

    def __init__(self, message: str, host: str, port: int) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


_BY_CODE: dict[str, type[OrchestratorError]] = {
    cls.code.value: cls
    for cls in (
        ValidationFailed,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        RateLimited,
        ActionTimeout,
        UpstreamUnavailable,
        Unavailable,
        InternalError,
    )
}


def error_from_body(body: ErrorBody) -> OrchestratorError:
    """Rebuild the typed exception that an error envelope from another process describes."""
    return _BY_CODE.get(body.code, InternalError)(body.message, body.details)


def error_for_upstream_status(status: int, message: str) -> OrchestratorError:
    """The typed error for an HTTP failure of a server we call (e.g. a model server).

    429 and 5xx may pass, so they are `upstream_unavailable` (408: `timeout`), which the
    orchestrator retries; any other status describes the request itself and is final: the code
    whose HTTP status it is (401 is `forbidden`: the caller cannot fix our credentials), else
    `validation_error`.
    """
    if status == 429 or status >= 500:
        return UpstreamUnavailable(message, {"upstream_status": status})
    if status == 408:
        return ActionTimeout(message, {"upstream_status": status})
    if status == 401:
        return Forbidden(message, {"upstream_status": status})
    code = next(
        (c for c, m in TRANSPORT.items() if m.http_status == status and c in _FINAL_UPSTREAM),
        ErrorCode.VALIDATION_ERROR,
    )
    return _BY_CODE[code.value](message, {"upstream_status": status})


_FINAL_UPSTREAM = frozenset(
    {
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.FORBIDDEN,
        ErrorCode.NOT_FOUND,
        ErrorCode.CONFLICT,
        ErrorCode.PAYLOAD_TOO_LARGE,
    }
)


class CloseCode(IntEnum):
    """WebSocket close codes the edge uses besides the per-error ones in `TRANSPORT`.

    Codes 4000 + HTTP status come from `TRANSPORT` (4401 unauthorized or token expired, 4403,
    4404); the ones below have no error code of their own. `SLOW_CONSUMER` sits outside the
    4000 + status range on purpose: it is not an HTTP condition.
    """

    NORMAL = 1000
    MESSAGE_TOO_BIG = 1009
    SERVICE_RESTART = 1012
    # A capacity limit (e.g. the user's WebSockets on this edge): the client may retry later.
    TRY_AGAIN_LATER = 1013
    SLOW_CONSUMER = 4008
    IDLE_TIMEOUT = 4408
