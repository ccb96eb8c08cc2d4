"""Tracing and metric providers owned by one object, and W3C trace context carried in NATS headers.

Tracing is on when `ORCH_OTEL_ENDPOINT` is set or a span exporter is passed in; metrics are on when
the endpoint is set, a metric reader is passed in, or `ORCH_METRICS_PROMETHEUS` asks for `/metrics`.
Otherwise the tracer and meter are the no-op ones of opentelemetry-api, and incoming trace context
still passes through to outgoing headers. Exporter headers and TLS files come from the standard
`OTEL_EXPORTER_OTLP_*` variables; the OTLP protocol follows the endpoint (`otlp_protocol`):

    grpc://host:port, grpcs://host:port, host:port, http(s)://host:4317  -> OTLP/gRPC
    any other http(s)://host[:port][/base]  -> OTLP/HTTP protobuf, /base/v1/{traces,metrics}

Usage:

    telemetry = Telemetry.start(settings)
    with telemetry.span_for_action(action_type, msg.headers, {"session.id": sid}):
        headers: dict[str, str] = {}
        with telemetry.client_span("execution.request", headers):
            await nc.request(subject, payload, headers=headers)
    telemetry.shutdown()
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from typing import Literal
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator.codecs.errors import ErrorCode, OrchestratorError
from orchestrator.service.runtime.metrics import Metrics
from orchestrator.service.runtime.settings import OrchestratorSettings

INSTRUMENTATION_NAME = "orchestrator"
ACTION_SPAN_PREFIX = "orchestrator."
GRPC_PORT = 4317

Protocol = Literal["grpc", "http/protobuf"]

# One propagator instance, used explicitly: the process-wide global propagator is not consulted.
_PROPAGATOR = TraceContextTextMapPropagator()


def otlp_protocol(endpoint: str) -> Protocol:
    """The OTLP protocol an endpoint speaks, by scheme and then by the conventional gRPC port."""
    if "://" not in endpoint:
        return "grpc"
    parts = urlsplit(endpoint)
    if parts.scheme in ("grpc", "grpcs") or parts.port == GRPC_PORT:
        return "grpc"
    return "http/protobuf"


def _otlp_exporters(endpoint: str) -> tuple[SpanExporter, MetricExporter]:
    """An OTLP span exporter and metric exporter for `endpoint` (imported lazily: grpc is heavy)."""
    if otlp_protocol(endpoint) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        parts = urlsplit(endpoint if "://" in endpoint else f"grpc://{endpoint}")
        secure = parts.scheme in ("grpcs", "https")
        target = f"{'https' if secure else 'http'}://{parts.netloc}"
        return (
            OTLPSpanExporter(endpoint=target, insecure=not secure),
            OTLPMetricExporter(endpoint=target, insecure=not secure),
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    base = endpoint.rstrip("/")
    return (
        HttpSpanExporter(endpoint=f"{base}/v1/traces"),
        HttpMetricExporter(endpoint=f"{base}/v1/metrics"),
    )


class Telemetry:
    """This process's tracer and meter, plus trace-context propagation through NATS headers."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        prometheus_reader: InMemoryMetricReader | None = None,
    ) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self.prometheus_reader = prometheus_reader
        self._tracer = (
            tracer_provider.get_tracer(INSTRUMENTATION_NAME)
            if tracer_provider
            else trace.NoOpTracer()
        )
        self._meter = (
            meter_provider.get_meter(INSTRUMENTATION_NAME)
            if meter_provider
            else metrics.NoOpMeter(INSTRUMENTATION_NAME)
        )

    @classmethod
    def off(cls) -> Telemetry:
        """No tracing and no metrics: the no-op tracer and meter (tests, tools, bare parts)."""
        return cls(None, None)

    @classmethod
    def start(
        cls,
        settings: OrchestratorSettings,
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
    ) -> Telemetry:
        """Build the providers `settings` ask for, plus the given exporter/reader (for tests)."""
        resource = Resource.create(
            {
                "service.name": settings.otel_service_name,
                "service.instance.id": settings.instance_id,
                "deployment.environment.name": settings.env.value,
            }
        )
        span_exporters: list[SpanExporter] = [span_exporter] if span_exporter else []
        readers: list[MetricReader] = [metric_reader] if metric_reader else []
        if settings.otel_endpoint:
            otlp_spans, otlp_metrics = _otlp_exporters(settings.otel_endpoint)
            span_exporters.append(otlp_spans)
            readers.append(PeriodicExportingMetricReader(otlp_metrics))
        prometheus_reader = InMemoryMetricReader() if settings.metrics_prometheus else None
        if prometheus_reader:
            readers.append(prometheus_reader)

        tracer_provider = None
        if span_exporters:
            tracer_provider = TracerProvider(resource=resource)
            for exporter in span_exporters:
                tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        meter_provider = (
            MeterProvider(resource=resource, metric_readers=readers) if readers else None
        )
        return cls(tracer_provider, meter_provider, prometheus_reader)

    @property
    def tracing(self) -> bool:
        """True when spans are recorded and exported."""
        return self._tracer_provider is not None

    @property
    def tracer(self) -> trace.Tracer:
        """The tracer of this instance (a no-op tracer when tracing is off)."""
        return self._tracer

    @property
    def meter(self) -> metrics.Meter:
        """The meter of this instance (a no-op meter when metrics are off); see `Metrics`."""
        return self._meter

    @cached_property
    def metrics(self) -> Metrics:
        """The orchestrator's instruments on this meter, created once (they record nothing when
        metrics are off): every part gets this object, never None."""
        return Metrics(self._meter)

    def inject(self, headers: dict[str, str] | None = None, context: Context | None = None) -> dict:
        """Add `traceparent`/`tracestate` of the current (or given) context to NATS headers."""
        headers = {} if headers is None else headers
        _PROPAGATOR.inject(headers, context=context)
        return headers

    def extract(self, headers: Mapping[str, str] | None) -> Context:
        """The trace context carried by incoming NATS headers (empty context if none)."""
        return _PROPAGATOR.extract(dict(headers or {}))

    @contextmanager
    def span_for_action(
        self,
        action_type: str,
        headers: Mapping[str, str] | None = None,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> Iterator[Span]:
        """A current SERVER span `orchestrator.<action_type>`, child of the caller's trace context.

        A raised error is recorded on the span, its `error.code` set (`internal` for untyped
        errors) and the status set to ERROR; the error is then re-raised.
        """
        attrs = {"orchestrator.action_type": action_type, **(attributes or {})}
        with self._tracer.start_as_current_span(
            f"{ACTION_SPAN_PREFIX}{action_type}",
            context=self.extract(headers),
            kind=SpanKind.SERVER,
            attributes=attrs,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:  # recorded on the span, re-raised; not cancellation
                record_error(span, exc)
                raise

    @contextmanager
    def client_span(
        self,
        name: str,
        headers_out: dict[str, str],
        kind: SpanKind = SpanKind.CLIENT,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> Iterator[Span]:
        """A current CLIENT (or PRODUCER) span whose context is injected into `headers_out`."""
        with self._tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            self.inject(headers_out)
            try:
                yield span
            except Exception as exc:  # recorded on the span, re-raised; not cancellation
                record_error(span, exc)
                raise

    def force_flush(self, timeout_millis: int = 10_000) -> None:
        """Export every finished span and the current metric values now."""
        if self._tracer_provider:
            self._tracer_provider.force_flush(timeout_millis)
        if self._meter_provider:
            self._meter_provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop exporters; blocks up to the OTLP timeout, so async code uses to_thread."""
        if self._tracer_provider:
            self._tracer_provider.shutdown()
        if self._meter_provider:
            self._meter_provider.shutdown()


def record_error(span: Span, exc: Exception) -> None:
    """Mark `span` failed by `exc`, with the stable `error.code` of typed errors."""
    code = exc.code.value if isinstance(exc, OrchestratorError) else ErrorCode.INTERNAL.value
    span.set_attribute("error.code", code)
    span.set_attribute("error.type", type(exc).__qualname__)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, code))
