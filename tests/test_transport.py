"""codecs/transport.py: error replies built and read by one pair of functions (so an edge and
the execution client read the same reply the same way) and the declared wire format."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.codecs.actions import TaskView
from orchestrator.codecs.errors import (
    TRANSPORT,
    ErrorBody,
    ErrorCode,
    UpstreamUnavailable,
    code_for_status,
    error_from_body,
    transport_for,
)
from orchestrator.codecs.records import TaskStatus
from orchestrator.codecs.transport import (
    CONTENT_TYPE_HEADER,
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    error_of_reply,
    error_reply,
    format_headers,
    format_of,
)
from orchestrator.codecs.wire import WireFormat, encode


@pytest.mark.parametrize("fmt", list(WireFormat))
@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_survives_an_error_reply_in_both_formats(code, fmt):
    sent = error_from_body(ErrorBody(code=code.value, message=f"failed {code}", details={"k": 1}))
    data, headers = error_reply(sent, fmt)
    assert headers[ERROR_CODE_HEADER] == str(transport_for(code).http_status)
    assert format_of(headers) is fmt
    got = error_of_reply(headers, data)
    assert type(got) is type(sent)
    assert (got.code, got.message, got.details) == (code, sent.message, {"k": 1})


def test_a_message_with_line_breaks_stays_whole_in_the_envelope_and_one_line_in_the_header():
    sent = UpstreamUnavailable("model server said:\r\n  rate limited\nretry later")
    data, headers = error_reply(sent, WireFormat.JSON)
    assert headers[ERROR_HEADER] == "model server said: rate limited retry later"
    assert error_of_reply(headers, data).message == sent.message


def test_only_the_error_header_makes_a_reply_an_error():
    now = datetime.now(UTC)
    failed = TaskView(
        task_id="t1", session_id="s1", agent_id="a", status=TaskStatus.FAILED,
        created_at=now, updated_at=now, error=ErrorBody(code="internal", message="boom"),
    )  # fmt: skip
    assert error_of_reply(None, encode(failed)) is None
    assert error_of_reply({CONTENT_TYPE_HEADER: "application/json"}, encode(failed)) is None


@pytest.mark.parametrize("code", list(ErrorCode))
def test_a_reply_with_only_a_status_gets_a_code_of_that_status(code):
    status = str(TRANSPORT[code].http_status)
    got = error_of_reply({ERROR_CODE_HEADER: status, ERROR_HEADER: "no envelope"}, b"not json")
    assert got is not None and got.message == "no envelope"
    assert TRANSPORT[got.code].http_status == TRANSPORT[code].http_status


def test_a_bare_503_is_upstream_unavailable_and_an_unknown_status_internal():
    assert code_for_status("503") is ErrorCode.UPSTREAM_UNAVAILABLE
    assert code_for_status(503) is ErrorCode.UPSTREAM_UNAVAILABLE
    assert code_for_status("418") is ErrorCode.INTERNAL
    assert code_for_status("five hundred") is ErrorCode.INTERNAL
    got = error_of_reply({ERROR_CODE_HEADER: "503"}, b"")
    assert isinstance(got, UpstreamUnavailable) and got.message == "error reply with status 503"


def test_the_declared_format_is_read_back_from_the_headers_that_declare_it():
    for fmt in WireFormat:
        assert format_of(format_headers(fmt)) is fmt
    assert format_headers(WireFormat.JSON) is None
    assert (
        format_of({"content-type": "application/x-msgpack; charset=binary"}) is WireFormat.MSGPACK
    )
    assert format_of({CONTENT_TYPE_HEADER: "text/plain"}) is WireFormat.JSON
