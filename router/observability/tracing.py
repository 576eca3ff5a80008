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
import random
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import IO

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN: AbstractContextManager[trace.Span] = contextlib.nullcontext(trace.INVALID_SPAN)


def stage(tracer: trace.Tracer, name: str, recording: bool) -> AbstractContextManager[trace.Span]:
    """A child span for one pipeline stage, only when the request's span records
    (``recording``: asked once per request, ``get_current_span().is_recording()``).

    An unsampled request (most of them in production) then pays for its one
    request span, not seven: ~6% of the router's CPU per request went to
    non-recording stage spans (docs/benchmarks.md), and ~1% more to asking
    OpenTelemetry's context for the current span at every stage."""
    return tracer.start_as_current_span(name) if recording else _NO_SPAN


class _Attached:
    """A span made current for the block; the cheap twin of ``use_span`` for spans
    that record nothing."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        otel_context.detach(self._token)


class RequestSpans:
    """The request's server span. Recorded spans come from the SDK; a request that
    will not be recorded (most of them: sampling, or no exporter) gets a
    non-recording span with fresh ids or the caller's trace id, made current
    without the SDK's span machinery (~2% of the router's CPU per request).

    ``recording``: an exporter is configured; ``root_ratio``: the fraction of new
    traces (no ``traceparent``) recorded. A caller's sampled flag is honoured by
    the provider's parent-based sampler (``build_provider``)."""

    def __init__(self, tracer: trace.Tracer, *, recording: bool, root_ratio: float) -> None:
        self._tracer = tracer
        self._recording = recording
        self._root_ratio = root_ratio

    def start(self, name: str, carrier: Mapping[str, str]) -> AbstractContextManager[trace.Span]:
        has_parent = "traceparent" in carrier
        if self._recording and (has_parent or random.random() < self._root_ratio):
            parent = PROPAGATOR.extract(carrier=carrier)
            return self._tracer.start_as_current_span(
                name, context=parent, kind=trace.SpanKind.SERVER
            )
        trace_id = 0
        if has_parent:
            ctx = trace.get_current_span(PROPAGATOR.extract(carrier=carrier)).get_span_context()
            trace_id = ctx.trace_id if ctx.is_valid else 0
        span = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id=trace_id or random.getrandbits(128) or 1,
                span_id=random.getrandbits(64) or 1,
                is_remote=False,
                trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
            )
        )
        return _Attached(span)


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


def build_provider(*, exporter: str, otlp_endpoint: str, jsonl_path: Path | None) -> TracerProvider:
    # No exporter: record nothing, not even for callers' sampled traces (ids
    # are still generated and propagated). New traces are sampled by
    # RequestSpans before a root span reaches the SDK (the request span is the
    # only root span the router starts): roots that get here are recorded,
    # children follow their parent's flag.
    sampler = ALWAYS_OFF if exporter == "none" else ParentBased(ALWAYS_ON)
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


def request_spans(provider: TracerProvider, exporter: str, sample_ratio: float) -> RequestSpans:
    return RequestSpans(tracer(provider), recording=exporter != "none", root_ratio=sample_ratio)
