"""Error replies of execution services: the micro headers, which codes are retryable, and the
typed error a reply carries."""

from __future__ import annotations

from orchestrator.codecs.errors import (
    TRANSPORT,
    ErrorBody,
    ErrorCode,
    ErrorEnvelope,
    OrchestratorError,
    ValidationFailed,
    error_from_body,
)
from orchestrator.codecs.wire import decode, format_of

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"

# Codes that may succeed on another attempt (or on another instance of the service); every other
# code describes the request itself, so repeating it would fail the same way.
RETRYABLE = frozenset(
    {ErrorCode.UPSTREAM_UNAVAILABLE, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.INTERNAL}
)


def is_retryable(error: OrchestratorError) -> bool:
    """Whether another attempt of the same request could succeed."""
    return error.code in RETRYABLE


def error_of_reply(headers: dict[str, str] | None, data: bytes) -> OrchestratorError | None:
    """The typed error an execution reply carries, or None if it is not an error reply."""
    fmt = format_of(headers)
    status = (headers or {}).get(ERROR_CODE_HEADER)
    try:
        envelope = decode(data, ErrorEnvelope, fmt)
    except ValidationFailed:
        if not status:
            return None
        # A micro error without our envelope: rebuild the code from the status it carries.
        code = next(
            (c for c, m in TRANSPORT.items() if str(m.http_status) == status), ErrorCode.INTERNAL
        )
        message = (headers or {}).get(ERROR_HEADER) or f"execution service error {status}"
        return error_from_body(ErrorBody(code=code.value, message=message))
    return error_from_body(envelope.error)
