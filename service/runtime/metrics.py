"""The orchestrator's metric instruments, one method per event, and a Prometheus text rendering.

Instrument names are stable (dashboards depend on them); Prometheus names replace `.` with `_`,
add `_total` to counters and `_seconds` to durations:

    orchestrator.actions              counter        action_type, outcome ("ok" or an error code)
    orchestrator.action.duration      histogram, s   action_type, outcome
    orchestrator.execution.duration   histogram, s   outcome ("attempt"); one value per attempt
    orchestrator.execution.retries    counter
    orchestrator.execution.timeouts   counter
    orchestrator.execution.silences   counter
    orchestrator.execution.parts_dropped counter     reason (malformed, wrong_task, wrong_attempt,
                                                     out_of_order, oversized, after_end)
    orchestrator.websockets.open      updowncounter
    orchestrator.sessions.active      gauge          (last value given to `set_active_sessions`)
    orchestrator.rate_limit.rejections counter       scope ("connection", "user", ...)
    orchestrator.kv.conflicts         counter        bucket

Usage:

    metrics = telemetry.metrics    # or Metrics(meter); Telemetry.off().metrics records nothing
    metrics.action_done("session.start", "ok", 0.012)
    body = prometheus_text(telemetry.prometheus_reader)   # for GET /metrics
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics.export import Gauge, Histogram, InMemoryMetricReader, Metric, Sum

OK = "ok"
ACTIONS = "orchestrator.actions"
ACTION_DURATION = "orchestrator.action.duration"
EXECUTION_DURATION = "orchestrator.execution.duration"
EXECUTION_RETRIES = "orchestrator.execution.retries"
EXECUTION_TIMEOUTS = "orchestrator.execution.timeouts"
EXECUTION_SILENCES = "orchestrator.execution.silences"
PARTS_DROPPED = "orchestrator.execution.parts_dropped"
WEBSOCKETS_OPEN = "orchestrator.websockets.open"
SESSIONS_ACTIVE = "orchestrator.sessions.active"
RATE_LIMIT_REJECTIONS = "orchestrator.rate_limit.rejections"
KV_CONFLICTS = "orchestrator.kv.conflicts"

# The SDK's default buckets suit milliseconds; actions and executions are timed in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Every instrument the orchestrator records, created once from one Meter."""

    def __init__(self, meter: Meter) -> None:
        self._actions = meter.create_counter(ACTIONS, "{action}", "DomainActions handled")
        self._action_duration = meter.create_histogram(
            ACTION_DURATION,
            "s",
            "Time to handle one DomainAction",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._execution_duration = meter.create_histogram(
            EXECUTION_DURATION,
            "s",
            "Time of one execution attempt, from its request to its end (each retry is one)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._retries = meter.create_counter(
            EXECUTION_RETRIES, "{retry}", "Execution attempts after the first"
        )
        self._timeouts = meter.create_counter(
            EXECUTION_TIMEOUTS, "{timeout}", "Execution attempts that timed out"
        )
        self._silences = meter.create_counter(
            EXECUTION_SILENCES,
            "{attempt}",
            "Execution attempts abandoned because no part or heartbeat arrived in time",
        )
        self._parts_dropped = meter.create_counter(
            PARTS_DROPPED, "{part}", "Stream messages from execution services that were refused"
        )
        self._websockets = meter.create_up_down_counter(
            WEBSOCKETS_OPEN, "{connection}", "WebSocket connections open on this instance"
        )
        self._rejections = meter.create_counter(
            RATE_LIMIT_REJECTIONS, "{request}", "Requests refused by a rate limit"
        )
        self._conflicts = meter.create_counter(
            KV_CONFLICTS, "{conflict}", "KV revision conflicts (each one retried or failed)"
        )
        self._active_sessions: int | None = None
        meter.create_observable_gauge(
            SESSIONS_ACTIVE, [self._observe_sessions], "{session}", "Sessions alive in the store"
        )

    def action_done(self, action_type: str, outcome: str, seconds: float) -> None:
        """Count one handled action and its duration; `outcome` is "ok" or the error code."""
        attributes = {"action_type": action_type, "outcome": outcome}
        self._actions.add(1, attributes)
        self._action_duration.record(seconds, attributes)

    def execution_done(self, outcome: str, seconds: float) -> None:
        """Record the duration of one execution attempt (a retry is another attempt)."""
        self._execution_duration.record(seconds, {"outcome": outcome})

    def execution_retry(self) -> None:
        """Count one more attempt of an execution."""
        self._retries.add(1)

    def execution_timeout(self) -> None:
        """Count one execution attempt that got no answer in time."""
        self._timeouts.add(1)

    def execution_silent(self) -> None:
        """Count one execution attempt abandoned for silence (no part or heartbeat)."""
        self._silences.add(1)

    def part_dropped(self, reason: str) -> None:
        """Count one stream message refused by the orchestrator; `reason` says why."""
        self._parts_dropped.add(1, {"reason": reason})

    def websocket_opened(self) -> None:
        """Count a WebSocket that was accepted."""
        self._websockets.add(1)

    def websocket_closed(self) -> None:
        """Count a WebSocket that closed, whatever the reason."""
        self._websockets.add(-1)

    def set_active_sessions(self, count: int) -> None:
        """Report how many sessions are alive (e.g. after each expiry sweep)."""
        self._active_sessions = count

    def rate_limited(self, scope: str) -> None:
        """Count a request a rate limit refused; `scope` names the limit."""
        self._rejections.add(1, {"scope": scope})

    def kv_conflict(self, bucket: str) -> None:
        """Count a revision conflict on a KV bucket."""
        self._conflicts.add(1, {"bucket": bucket})

    def _observe_sessions(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._active_sessions is None:
            return []
        return [Observation(self._active_sessions)]


def prometheus_name(metric: Metric) -> str:
    """The Prometheus name of an OTel metric: `_` for `.`, unit and `_total` suffixes."""
    name = re.sub(r"[^A-Za-z0-9_:]", "_", metric.name)
    if metric.unit == "s" and not name.endswith("_seconds"):
        name += "_seconds"
    if isinstance(metric.data, Sum) and metric.data.is_monotonic:
        name += "_total"
    return name


def prometheus_text(reader: InMemoryMetricReader | None) -> str:
    """Render the reader's current (cumulative) values in the Prometheus text format 0.0.4."""
    data = reader.get_metrics_data() if reader else None
    if data is None:
        return ""
    lines: list[str] = []
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                lines.extend(_render(metric))
    return "\n".join(lines) + "\n" if lines else ""


def _render(metric: Metric) -> Iterator[str]:
    name = prometheus_name(metric)
    data = metric.data
    if isinstance(data, Sum):
        kind = "counter" if data.is_monotonic else "gauge"
    elif isinstance(data, Gauge):
        kind = "gauge"
    elif isinstance(data, Histogram):
        kind = "histogram"
    else:  # exponential histograms are not configured here
        return
    yield f"# HELP {name} {_escape_help(metric.description or metric.name)}"
    yield f"# TYPE {name} {kind}"
    for point in data.data_points:
        labels = dict(point.attributes or {})
        if isinstance(data, Histogram):
            cumulative = 0
            for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
                cumulative += count
                yield f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {cumulative}"
            yield f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {point.count}"
            yield f"{name}_sum{_labels(labels)} {_number(point.sum)}"
            yield f"{name}_count{_labels(labels)} {point.count}"
        else:
            yield f"{name}{_labels(labels)} {_number(point.value)}"


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    parts = (
        f'{re.sub(r"[^A-Za-z0-9_]", "_", str(key))}="{_escape_value(str(value))}"'
        for key, value in labels.items()
    )
    return "{" + ",".join(parts) + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _number(value: float) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if math.isnan(value):
            return "NaN"
        if value.is_integer():
            return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)
