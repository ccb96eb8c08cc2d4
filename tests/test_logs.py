"""Log lines: JSON or text by settings, bound context and trace ids, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import jwt
import pytest
from loguru import logger
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator.service.runtime.logs import (
    REDACTED,
    action_logger,
    configure_logging,
    reset_logging,
    wants_json,
)
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry

A_JWT = jwt.encode(
    {"sub": "user-1", "tenant": "t1"}, "a-test-secret-of-32-bytes-or-more!!", "HS256"
)


@pytest.fixture
def sink() -> Iterator[io.StringIO]:
    """Where log lines land during the test; loguru and stdlib logging are restored after."""
    stream = io.StringIO()
    try:
        yield stream
    finally:
        reset_logging()


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_bound_context_and_active_trace_id(sink: io.StringIO) -> None:
    configure_logging(OrchestratorSettings(log_format="json"), sink=sink)
    telemetry = Telemetry.start(OrchestratorSettings(), span_exporter=InMemorySpanExporter())
    try:
        with telemetry.span_for_action("session.start", None) as span:
            log = action_logger(
                action_id="a1", correlation_id="c1", tenant_id="t1", session_id="s1"
            )
            log.info("session {} started", "s1")
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        telemetry.shutdown()

    (line,) = json_lines(sink)
    assert line["message"] == "session s1 started"
    assert line["level"] == "INFO"
    assert line["action_id"] == "a1"
    assert line["correlation_id"] == "c1"
    assert line["tenant_id"] == "t1"
    assert line["session_id"] == "s1"
    assert line["trace_id"] == trace_id
    assert line["time"].endswith("+00:00")


def test_lines_logged_inside_a_span_get_its_trace_id_without_binding(sink: io.StringIO) -> None:
    configure_logging(OrchestratorSettings(log_format="json"), sink=sink)
    telemetry = Telemetry.start(OrchestratorSettings(), span_exporter=InMemorySpanExporter())
    try:
        with telemetry.span_for_action("session.get", None) as span:
            logger.warning("inside")
            context = span.get_span_context()
        logger.warning("outside")
    finally:
        telemetry.shutdown()

    inside, outside = json_lines(sink)
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in outside


def test_jwt_and_credentials_are_redacted_from_message_and_fields(sink: io.StringIO) -> None:
    configure_logging(OrchestratorSettings(log_format="json"), sink=sink)

    log = action_logger(action_id="a1", token=A_JWT, password="hunter2", note=A_JWT)
    log.info("login with {} then Authorization: Bearer abc123 and ?token=s3cr3t&x=1", A_JWT)

    output = sink.getvalue()
    assert A_JWT not in output
    assert "abc123" not in output
    assert "s3cr3t" not in output
    assert "hunter2" not in output
    (line,) = json_lines(sink)
    assert line["message"] == (
        f"login with {REDACTED} then Authorization: Bearer {REDACTED} and ?token={REDACTED}&x=1"
    )
    assert line["token"] == line["password"] == REDACTED
    assert line["note"] == REDACTED
    assert line["action_id"] == "a1"


def test_secrets_in_exception_text_are_redacted(sink: io.StringIO) -> None:
    configure_logging(OrchestratorSettings(log_format="json"), sink=sink)

    try:
        raise ValueError(f"bad token {A_JWT}")
    except ValueError:
        logger.exception("failed")

    (line,) = json_lines(sink)
    assert "ValueError: bad token [redacted]" in line["exception"]
    assert A_JWT not in sink.getvalue()


def test_dotted_names_are_not_mistaken_for_tokens(sink: io.StringIO) -> None:
    configure_logging(OrchestratorSettings(log_format="json"), sink=sink)

    logger.info("subject nooble4.orchestrator.session.start on orchestrator-1.example.internal")

    (line,) = json_lines(sink)
    assert line["message"] == (
        "subject nooble4.orchestrator.session.start on orchestrator-1.example.internal"
    )


def test_text_mode_writes_readable_lines_with_context(sink: io.StringIO) -> None:
    configure_logging(OrchestratorSettings(log_format="text"), sink=sink)

    action_logger(action_id="a1").info("hello {}", A_JWT)

    (line,) = sink.getvalue().splitlines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    assert "| INFO     |" in line
    assert line.endswith(f"hello {REDACTED} action_id=a1")
    assert "\x1b[" not in line, "no colour codes"


def test_level_setting_drops_lower_levels(sink: io.StringIO) -> None:
    configure_logging(OrchestratorSettings(log_format="json", log_level="warning"), sink=sink)

    logger.info("dropped")
    logger.warning("kept")

    assert [line["message"] for line in json_lines(sink)] == ["kept"]


def test_auto_format_is_json_in_prod_and_text_in_dev() -> None:
    prod = OrchestratorSettings(env="prod", jwt_secret="x" * 40)
    assert wants_json(prod)
    assert not wants_json(OrchestratorSettings(env="dev"))
    assert not wants_json(OrchestratorSettings(env="prod", jwt_secret="x" * 40, log_format="text"))


def test_stdlib_warnings_are_routed_into_loguru_and_info_is_not(sink: io.StringIO) -> None:
    configure_logging(OrchestratorSettings(log_format="json"), sink=sink)
    library = logging.getLogger("nats.aio.client")

    library.info("chatty")
    library.warning("reconnecting with password=hunter2")

    (line,) = json_lines(sink)
    assert line["message"] == f"reconnecting with password={REDACTED}"
    assert line["logger"] == "nats.aio.client"
    assert line["level"] == "WARNING"


def test_configuring_twice_keeps_one_handler(sink: io.StringIO) -> None:
    configure_logging(OrchestratorSettings(log_format="json"), sink=sink)
    configure_logging(OrchestratorSettings(log_format="json"), sink=sink)

    logger.info("once")
    logging.getLogger("aiohttp.access").error("once too")

    assert [line["message"] for line in json_lines(sink)] == ["once", "once too"]
