"""Loguru set up once per process: JSON lines or plain text, bound context, trace ids, no secrets.

JSON lines are written when `ORCH_LOG_FORMAT=json`, or `auto` with `ORCH_ENV=prod`; plain colourless
lines otherwise. Every record gets `trace_id`/`span_id` of the active span, and secrets (JWTs,
`Bearer ...`, `token=...`, extra fields named like secrets) are replaced by `[redacted]` before any
handler sees them. stdlib `logging` (nats-py, aiohttp) is routed into loguru from WARNING up.

Usage:

    configure_logging(settings)
    log = action_logger(action_id=env.action_id, correlation_id=env.correlation_id)
    log.info("session {} started", session_id)
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC
from typing import Any, TextIO

from loguru import logger
from opentelemetry import trace

from orchestrator.service.runtime.settings import Environment, LogFormat, OrchestratorSettings

REDACTED = "[redacted]"
CONTEXT_FIELDS = ("action_id", "correlation_id", "trace_id", "tenant_id", "session_id")

# A JWT's header is base64url JSON, so it starts with "eyJ" ('{"'); requiring that keeps dotted
# names such as hosts or subjects from looking like tokens.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# "Basic" only capitalised: the lowercase word is common prose.
_SCHEME_CREDENTIAL = re.compile(r"\b((?i:bearer)|Basic)(\s+)[A-Za-z0-9._~+/=-]+")
_KEY_VALUE_SECRET = re.compile(
    r"(?i)\b(\w*(?:token|password|secret|api_key|apikey)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',;]+"
)
_SECRET_KEY = re.compile(r"(?i)(token|password|passwd|secret|authorization|api_?key|jwt|creds)$")


def redact(text: str) -> str:
    """`text` with JWTs, `Bearer`/`Basic` credentials and `*token=`/`password: ` values replaced."""
    text = _JWT.sub(REDACTED, text)
    text = _SCHEME_CREDENTIAL.sub(rf"\1\2{REDACTED}", text)
    return _KEY_VALUE_SECRET.sub(rf"\1{REDACTED}", text)


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", v) for v in value]
    return value


def _patch(record: dict) -> None:
    """Runs once per record before every handler: add the active span's ids, redact secrets."""
    extra = record["extra"]
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        extra.setdefault("trace_id", format(span_context.trace_id, "032x"))
        extra.setdefault("span_id", format(span_context.span_id, "016x"))
    for key, value in extra.items():
        extra[key] = _redact_value(key, value)
    record["message"] = redact(record["message"])


def _exception_text(record: dict) -> str:
    # Formatted here rather than by loguru: its `diagnose` mode prints local variables, which
    # can hold tokens, and the traceback text itself must pass through `redact`.
    exception = record["exception"]
    if exception is None:
        return ""
    return redact(
        "".join(traceback.format_exception(exception.type, exception.value, exception.traceback))
    )


class _JsonSink:
    """Writes one JSON object per record."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, message: Any) -> None:
        record = message.record
        line: dict[str, Any] = {
            **record["extra"],
            "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds"),
            "level": record["level"].name,
            "logger": record["name"],
            "function": record["function"],
            "line": record["line"],
            "message": record["message"],
        }
        if record["exception"] is not None:
            line["exception"] = _exception_text(record)
        self._stream.write(json.dumps(line, default=str) + "\n")
        self._stream.flush()


class _TextSink:
    """Writes one readable line per record, bound context as `key=value` after the message."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, message: Any) -> None:
        record = message.record
        context = "".join(f" {key}={value}" for key, value in record["extra"].items())
        time = record["time"]
        stamp = f"{time:%Y-%m-%d %H:%M:%S}.{time.microsecond // 1000:03d}"
        line = (
            f"{stamp} | {record['level'].name:<8} | "
            f"{record['name']}:{record['line']} | {record['message']}{context}\n"
        )
        self._stream.write(line + _exception_text(record))
        self._stream.flush()


class _InterceptHandler(logging.Handler):
    """Forwards stdlib `logging` records to loguru with the original logger name and level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.patch(lambda r: r.update(name=record.name, line=record.lineno)).opt(
            exception=record.exc_info
        ).log(level, record.getMessage())


def wants_json(settings: OrchestratorSettings) -> bool:
    """True when log lines should be JSON: asked for, or `auto` in production."""
    if settings.log_format is LogFormat.AUTO:
        return settings.env is Environment.PROD
    return settings.log_format is LogFormat.JSON


def configure_logging(settings: OrchestratorSettings, sink: TextIO = sys.stderr) -> None:
    """Replace loguru's handlers with one writing to `sink`, and route stdlib logging into it."""
    logger.remove()
    logger.configure(patcher=_patch)
    writer = _JsonSink(sink) if wants_json(settings) else _TextSink(sink)
    logger.add(writer.write, level=settings.log_level.upper(), format="{message}")

    _detach_stdlib()
    logging.getLogger().addHandler(_InterceptHandler(level=logging.WARNING))


def reset_logging() -> None:
    """Undo `configure_logging`: loguru's default stderr handler, stdlib logging left alone."""
    logger.remove()
    logger.configure(patcher=lambda _record: None)
    logger.add(sys.stderr)
    _detach_stdlib()


def _detach_stdlib() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _InterceptHandler)]:
        root.removeHandler(handler)


def action_logger(**context: Any) -> Any:
    """A logger bound to `context` (action_id, correlation_id, tenant_id, ...) and the trace id."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid and "trace_id" not in context:
        context["trace_id"] = format(span_context.trace_id, "032x")
    return logger.bind(**context)
