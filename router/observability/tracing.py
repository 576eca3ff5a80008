"""OpenTelemetry tracing: one span per request, one child span per stage when sampled.

The caller's W3C ``traceparent`` is continued (Envoy forwards it), so a trace
runs client -> Envoy -> router -> Triton (the router sends ``traceparent`` to
Triton, whose own OpenTelemetry tracing continues it when enabled). Spans carry
tenant, model, version and experiment arm so traces can be sliced like the
metrics. Sampling is parent-based with a ratio for new traces: spans cost CPU
on the hot path, so production samples a fraction; the trace id is echoed in
every response either way.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN: AbstractContextManager[trace.Span] = contextlib.nullcontext(trace.INVALID_SPAN)


def stage(tracer: trace.Tracer, name: str) -> AbstractContextManager[trace.Span]:
    """A child span for one pipeline stage, only when the request's span records.

    An unsampled request (most of them in production) then pays for its one
    request span, not seven: ~6% of the router's CPU per request went to
    non-recording stage spans (docs/benchmarks.md)."""
    if trace.get_current_span().is_recording():
        return tracer.start_as_current_span(name)
    return _NO_SPAN


class JsonLinesExporter(SpanExporter):
    """Spans as JSON lines in a file: local runs and tests read traces from it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("a", buffering=1)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for s in spans:
            ctx = s.get_span_context()
            parent = s.parent.span_id if s.parent is not None else None
            record = {
                "name": s.name,
                "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
                "span_id": f"{ctx.span_id:016x}" if ctx else None,
                "parent_id": f"{parent:016x}" if parent else None,
                "start_ns": s.start_time,
                "end_ns": s.end_time,
                "attributes": dict(s.attributes or {}),
                "status": s.status.status_code.name,
            }
            self._file.write(json.dumps(record, default=str) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def build_provider(
    *, exporter: str, sample_ratio: float, otlp_endpoint: str, jsonl_path: Path | None
) -> TracerProvider:
    # No exporter: record nothing, not even for callers' sampled traces (ids
    # are still generated and propagated).
    sampler = ALWAYS_OFF if exporter == "none" else ParentBased(TraceIdRatioBased(sample_ratio))
    provider = TracerProvider(
        resource=Resource.create({"service.name": "inferline-router"}), sampler=sampler
    )
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
        )
    elif exporter == "jsonl":
        assert jsonl_path is not None, "tracing.jsonl_path is required with the jsonl exporter"
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(jsonl_path)))
    return provider


def tracer(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer("inferline.router")
