"""OpenTelemetry: one trace follows a query bank -> registry -> nodes.

Trace context travels in gRPC metadata (W3C traceparent) through the
opentelemetry-instrumentation-grpc interceptors installed on every server and channel.
Spans carry ids, purposes and outcomes, never keys, signatures or record contents.
Set XINYI_OTEL_EXPORTER=console to print finished spans to stderr, or the standard
OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://collector:4317; https:// for TLS) to send them to an
OpenTelemetry collector over OTLP/gRPC (the other OTEL_EXPORTER_OTLP_* variables apply too).
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

_configured = False


def setup(service_name: str) -> TracerProvider:
    """Install a tracer provider once per process (the first caller names the service)."""
    global _configured
    provider = trace.get_tracer_provider()
    if _configured and isinstance(provider, TracerProvider):
        return provider
    console = os.environ.get("XINYI_OTEL_EXPORTER", "").lower() == "console"
    otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())
    exporting = console or otlp
    # With no exporter nothing would read a recorded span, so none is recorded: trace ids are
    # still made and propagated (they go into the audit log), at a fraction of the cost.
    sampler = None if exporting else ALWAYS_OFF  # None: the SDK default, or OTEL_TRACES_SAMPLER
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=sampler)
    if console:
        import sys

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    if otlp:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # The endpoint, headers, TLS and timeout come from the OTEL_EXPORTER_OTLP_* variables.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True
    return trace.get_tracer_provider()  # type: ignore[return-value]


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_trace_id() -> str:
    """The W3C trace id of the active span, as 32 hex characters ("" outside a trace)."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
