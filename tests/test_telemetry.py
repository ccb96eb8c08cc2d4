"""Trace context across real NATS request-reply, typed errors on spans, and metric instruments."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from orchestrator.codecs.errors import NotFound
from orchestrator.service.runtime.metrics import (
    ACTION_DURATION,
    ACTIONS,
    EXECUTION_RETRIES,
    KV_CONFLICTS,
    RATE_LIMIT_REJECTIONS,
    SESSIONS_ACTIVE,
    WEBSOCKETS_OPEN,
    Metrics,
    prometheus_text,
)
from orchestrator.service.runtime.settings import OrchestratorSettings
from orchestrator.service.runtime.telemetry import Telemetry, otlp_protocol
from orchestrator.subjects.names import Subjects

SUBJECTS = Subjects("telemetrytest")


class Traced:
    """One traced process: its own Telemetry and the spans it exported."""

    def __init__(self, name: str) -> None:
        self.exporter = InMemorySpanExporter()
        settings = OrchestratorSettings(otel_service_name=name)
        self.telemetry = Telemetry.start(settings, span_exporter=self.exporter)

    def spans(self) -> list[ReadableSpan]:
        self.telemetry.force_flush()
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        (found,) = [span for span in self.spans() if span.name == name]
        return found


@pytest.fixture
def processes() -> Iterator[dict[str, Traced]]:
    """Three independent traced processes: a caller, an orchestrator and an execution service."""
    made = {name: Traced(name) for name in ("caller", "orchestrator", "execution")}
    try:
        yield made
    finally:
        for process in made.values():
            process.telemetry.shutdown()


async def serve_execution(nc: Client, execution: Traced) -> None:
    async def handle(msg: Msg) -> None:
        with execution.telemetry.span_for_action("execution.run", msg.headers):
            await msg.respond(b"done")

    await nc.subscribe(SUBJECTS.execution_run, cb=handle)


async def serve_action(nc: Client, orchestrator: Traced, forward: bool) -> None:
    telemetry = orchestrator.telemetry

    async def handle(msg: Msg) -> None:
        with telemetry.span_for_action("session.start", msg.headers, {"session.id": "s1"}):
            if forward:
                headers: dict[str, str] = {}
                with telemetry.client_span("execution.run", headers):
                    await nc.request(SUBJECTS.execution_run, b"", timeout=5, headers=headers)
            await msg.respond(b"ok")

    await nc.subscribe(SUBJECTS.action("session.start"), cb=handle)


async def call_action(nc: Client, caller: Traced) -> bytes:
    headers: dict[str, str] = {}
    with caller.telemetry.client_span("request session.start", headers):
        reply = await nc.request(
            SUBJECTS.action("session.start"), b"{}", timeout=5, headers=headers
        )
    assert "traceparent" in headers
    return reply.data


async def test_responder_span_is_child_of_requester_span_across_nats(
    nc: Client, processes: dict[str, Traced]
) -> None:
    caller, orchestrator = processes["caller"], processes["orchestrator"]
    await serve_action(nc, orchestrator, forward=False)

    assert await call_action(nc, caller) == b"ok"

    client = caller.span("request session.start")
    server = orchestrator.span("orchestrator.session.start")
    assert client.kind is SpanKind.CLIENT and server.kind is SpanKind.SERVER
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == client.context.span_id
    assert server.context.trace_id == client.context.trace_id
    assert server.attributes["session.id"] == "s1"
    assert server.attributes["orchestrator.action_type"] == "session.start"
    assert orchestrator.spans() == [server], "each process exports only its own spans"


async def test_trace_continues_through_two_request_reply_hops(
    nc: Client, processes: dict[str, Traced]
) -> None:
    caller, orchestrator, execution = processes.values()
    await serve_execution(nc, execution)
    await serve_action(nc, orchestrator, forward=True)

    assert await call_action(nc, caller) == b"ok"

    client = caller.span("request session.start")
    action = orchestrator.span("orchestrator.session.start")
    outgoing = orchestrator.span("execution.run")
    run = execution.span("orchestrator.execution.run")
    assert action.parent.span_id == client.context.span_id
    assert outgoing.parent.span_id == action.context.span_id
    assert outgoing.kind is SpanKind.CLIENT
    assert run.parent.span_id == outgoing.context.span_id
    trace_ids = {span.context.trace_id for span in (client, action, outgoing, run)}
    assert trace_ids == {client.context.trace_id}


def test_typed_error_sets_error_code_and_status_on_action_span(
    processes: dict[str, Traced],
) -> None:
    orchestrator = processes["orchestrator"]
    with (
        pytest.raises(NotFound),
        orchestrator.telemetry.span_for_action("session.get", None),
    ):
        raise NotFound("no such session")

    span = orchestrator.span("orchestrator.session.get")
    assert span.attributes["error.code"] == "not_found"
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


def test_untyped_error_is_recorded_as_internal(processes: dict[str, Traced]) -> None:
    orchestrator = processes["orchestrator"]
    with (
        pytest.raises(KeyError),
        orchestrator.telemetry.span_for_action("session.get", None),
    ):
        raise KeyError("boom")

    span = orchestrator.span("orchestrator.session.get")
    assert span.attributes["error.code"] == "internal"
    assert span.attributes["error.type"] == "KeyError"


def test_successful_action_span_has_no_error(processes: dict[str, Traced]) -> None:
    orchestrator = processes["orchestrator"]
    with orchestrator.telemetry.span_for_action("session.get", None):
        pass

    span = orchestrator.span("orchestrator.session.get")
    assert "error.code" not in span.attributes
    assert span.status.status_code is StatusCode.UNSET


async def test_telemetry_off_is_noop_but_passes_incoming_trace_context_on(nc: Client) -> None:
    telemetry = Telemetry.start(OrchestratorSettings())
    assert not telemetry.tracing
    incoming = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    try:
        assert "traceparent" not in telemetry.inject()
        with telemetry.span_for_action("session.start", incoming) as span:
            assert not span.is_recording()
            outgoing: dict[str, str] = {}
            with telemetry.client_span("execution.run", outgoing):
                pass
        assert outgoing["traceparent"] == incoming["traceparent"]
        Metrics(telemetry.meter).action_done("session.start", "ok", 0.1)
        with pytest.raises(NotFound), telemetry.span_for_action("session.get", None):
            raise NotFound("still raised when off")
    finally:
        telemetry.shutdown()


def test_otlp_protocol_follows_scheme_then_port() -> None:
    assert otlp_protocol("collector:4317") == "grpc"
    assert otlp_protocol("grpc://collector:9000") == "grpc"
    assert otlp_protocol("grpcs://collector") == "grpc"
    assert otlp_protocol("http://collector:4317") == "grpc"
    assert otlp_protocol("http://collector:4318") == "http/protobuf"
    assert otlp_protocol("https://otlp.example.com/otlp") == "http/protobuf"


@pytest.fixture
def metered() -> Iterator[tuple[Metrics, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    telemetry = Telemetry.start(OrchestratorSettings(), metric_reader=reader)
    try:
        yield Metrics(telemetry.meter), reader
    finally:
        telemetry.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, dict[tuple, object]]:
    """Metric name -> {sorted attribute items: data point}."""
    data = reader.get_metrics_data()
    found: dict[str, dict[tuple, object]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = {
                    tuple(sorted(p.attributes.items())): p for p in metric.data.data_points
                }
    return found


def test_metrics_count_actions_by_type_and_outcome(
    metered: tuple[Metrics, InMemoryMetricReader],
) -> None:
    metrics, reader = metered
    metrics.action_done("session.start", "ok", 0.02)
    metrics.action_done("session.start", "ok", 0.3)
    metrics.action_done("session.get", "not_found", 0.001)
    metrics.execution_retry()
    metrics.execution_retry()
    metrics.websocket_opened()
    metrics.websocket_opened()
    metrics.websocket_closed()
    metrics.rate_limited("user")
    metrics.kv_conflict("sessions")
    metrics.set_active_sessions(7)

    found = points(reader)
    ok = (("action_type", "session.start"), ("outcome", "ok"))
    missing = (("action_type", "session.get"), ("outcome", "not_found"))
    assert found[ACTIONS][ok].value == 2
    assert found[ACTIONS][missing].value == 1
    assert found[ACTION_DURATION][ok].count == 2
    assert found[ACTION_DURATION][ok].sum == pytest.approx(0.32)
    assert found[EXECUTION_RETRIES][()].value == 2
    assert found[WEBSOCKETS_OPEN][()].value == 1
    assert found[RATE_LIMIT_REJECTIONS][(("scope", "user"),)].value == 1
    assert found[KV_CONFLICTS][(("bucket", "sessions"),)].value == 1
    assert found[SESSIONS_ACTIVE][()].value == 7


def test_prometheus_text_exposes_current_values(
    metered: tuple[Metrics, InMemoryMetricReader],
) -> None:
    metrics, reader = metered
    metrics.action_done("session.start", "ok", 0.02)
    metrics.action_done("session.start", "ok", 0.3)
    metrics.execution_timeout()
    metrics.websocket_opened()

    lines = prometheus_text(reader).splitlines()

    assert "# TYPE orchestrator_actions_total counter" in lines
    assert 'orchestrator_actions_total{action_type="session.start",outcome="ok"} 2' in lines
    assert "orchestrator_execution_timeouts_total 1" in lines
    assert "# TYPE orchestrator_websockets_open gauge" in lines
    assert "orchestrator_websockets_open 1" in lines
    duration = "orchestrator_action_duration_seconds"
    assert f"# TYPE {duration} histogram" in lines
    labels = 'action_type="session.start",outcome="ok"'
    assert f'{duration}_bucket{{{labels},le="0.025"}} 1' in lines
    assert f'{duration}_bucket{{{labels},le="0.5"}} 2' in lines
    assert f'{duration}_bucket{{{labels},le="+Inf"}} 2' in lines
    assert f"{duration}_count{{{labels}}} 2" in lines


def test_prometheus_text_escapes_label_values(
    metered: tuple[Metrics, InMemoryMetricReader],
) -> None:
    metrics, reader = metered
    metrics.rate_limited('a"b\\c\nd')

    text = prometheus_text(reader)

    assert 'orchestrator_rate_limit_rejections_total{scope="a\\"b\\\\c\\nd"} 1' in text
