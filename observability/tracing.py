"""OpenTelemetry spans per request, with the trace id every response and log line carries.

Each process that receives requests builds one ``RequestTracer``. Spans are exported in the
background (a batch processor: nothing waits on the exporter), over OTLP/HTTP to the
configured endpoint and/or as JSON lines to a file. A request whose trace is not sampled
still gets a trace id (the SDK makes one before it samples), so logs and headers always
have one; without an exporter nothing is recorded at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from observability.config import TracingConfig

SERVICE_NAME = "llm-cluster"
_PROPAGATOR = TraceContextTextMapPropagator()


def otlp_traces_url(endpoint: str) -> str:
    """OTLP/HTTP's traces path on a collector's base URL (a full URL is kept)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def _file_exporter(path: str) -> ConsoleSpanExporter:
    """One JSON object per line; each process appends to its own file (``path``.pid)."""
    out = open(f"{path}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 - lives with the process
    return ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")


def _provider(cfg: TracingConfig, component: str) -> TracerProvider:
    exporters: list[Any] = []
    if cfg.endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter(endpoint=otlp_traces_url(cfg.endpoint)))
    if cfg.file:
        exporters.append(_file_exporter(cfg.file))
    sampler = ParentBased(TraceIdRatioBased(cfg.sample_ratio)) if exporters else ALWAYS_OFF
    resource = Resource.create({"service.name": SERVICE_NAME, "service.component": component})
    provider = TracerProvider(sampler=sampler, resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@dataclass
class RequestSpan:
    """A request's span and the ids that go into its response headers and log line."""

    span: trace.Span
    trace_id: str
    traceparent: str

    def finish(self, status: int, attributes: dict[str, Any]) -> None:
        if not self.span.is_recording():
            return
        self.span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()


class RequestTracer:
    """Starts a server span per request, continuing the caller's W3C ``traceparent``."""

    def __init__(self, cfg: TracingConfig, component: str) -> None:
        self.provider = _provider(cfg, component)
        self.tracer = self.provider.get_tracer("llm_cluster")

    def start(self, method: str, path: str, traceparent: str | None) -> RequestSpan:
        parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
        span = self.tracer.start_span(
            f"{method} {path}",
            context=parent or context.Context(),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        ctx = span.get_span_context()
        trace_id = format(ctx.trace_id, "032x")
        flags = int(ctx.trace_flags)
        return RequestSpan(span, trace_id, f"00-{trace_id}-{ctx.span_id:016x}-{flags:02x}")

    def shutdown(self) -> None:
        self.provider.shutdown()
