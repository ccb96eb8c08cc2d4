"""What rides in NATS headers: every header name the orchestrator reads or writes, the wire
format a message declares, and error replies in both directions.

An error reply is a NATS micro error: the `Nats-Service-Error` header holds the message and
`Nats-Service-Error-Code` the HTTP status of the code (micro's own convention, e.g. "503"); the
body is the error envelope. Every sender builds it with `error_reply` and every receiver reads
it with `error_of_reply`, so one mapping (codecs/errors.py) decides both directions.
"""

from __future__ import annotations

from typing import Final

from orchestrator.codecs.errors import (
    ErrorBody,
    ErrorEnvelope,
    OrchestratorError,
    ValidationFailed,
    code_for_status,
    error_from_body,
    transport_for,
)
from orchestrator.codecs.wire import WireFormat, decode, encode

CONTENT_TYPE_HEADER: Final = "Content-Type"
"""The wire format of a body: MessagePack when it names a MessagePack type, else JSON."""
ERROR_HEADER: Final = "Nats-Service-Error"
"""A micro error reply's message."""
ERROR_CODE_HEADER: Final = "Nats-Service-Error-Code"
"""A micro error reply's code: the HTTP status of the error's code."""
MSG_ID_HEADER: Final = "Nats-Msg-Id"
"""JetStream de-duplication id of a published message."""
STREAM_HEADER: Final = "Nats-Stream"
"""Set by JetStream republish: the stream the message is stored in."""
SUBJECT_HEADER: Final = "Nats-Subject"
"""Set by JetStream republish: the subject the message was stored under."""
SEQUENCE_HEADER: Final = "Nats-Sequence"
"""Set by JetStream republish: the message's stream sequence."""
LAST_SEQUENCE_HEADER: Final = "Nats-Last-Sequence"
"""Set by JetStream republish: the sequence of the previous message on the subject."""

_MSGPACK_ALIASES = frozenset(
    {"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"}
)


def format_of(headers: dict[str, str] | None) -> WireFormat:
    """The wire format a message declares; JSON when it declares none."""
    if headers:
        value = headers.get(CONTENT_TYPE_HEADER) or headers.get("content-type")
        if value and value.split(";", 1)[0].strip().lower() in _MSGPACK_ALIASES:
            return WireFormat.MSGPACK
    return WireFormat.JSON


def format_headers(fmt: WireFormat) -> dict[str, str] | None:
    """The headers that declare `fmt` on a message (none for JSON, the default)."""
    return {CONTENT_TYPE_HEADER: fmt.value} if fmt is WireFormat.MSGPACK else None


def error_reply(error: OrchestratorError, fmt: WireFormat) -> tuple[bytes, dict[str, str]]:
    """The body and headers that answer a request with `error`, in the request's format."""
    headers = format_headers(fmt) or {}
    # A header value may not hold a line break (it would end the header block); the envelope in
    # the body keeps the message intact.
    headers[ERROR_HEADER] = " ".join(error.message.split())[:256]
    headers[ERROR_CODE_HEADER] = str(transport_for(error.code).http_status)
    return encode(error.envelope(), fmt), headers


def is_error_reply(headers: dict[str, str] | None) -> bool:
    """Whether a reply is an error reply: micro's error code header marks it, not its body."""
    return ERROR_CODE_HEADER in (headers or {})


def error_of_reply(headers: dict[str, str] | None, data: bytes) -> OrchestratorError | None:
    """The typed error a reply carries, or None if it is not an error reply.

    Only the header makes a reply an error (a reply body may itself hold an `error` field: a
    failed task's view). The envelope in the body gives the code; a reply from a service that
    sends none gets the code of its status (`code_for_status`) and the header's message.
    """
    if headers is None or not is_error_reply(headers):
        return None
    status = headers[ERROR_CODE_HEADER]
    try:
        return error_from_body(decode(data, ErrorEnvelope, format_of(headers)).error)
    except ValidationFailed:
        message = headers.get(ERROR_HEADER) or f"error reply with status {status}"
        return error_from_body(ErrorBody(code=code_for_status(status).value, message=message))
