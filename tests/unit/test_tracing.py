"""Request spans: sampled new traces and callers' sampled traces are recorded by
the SDK; everything else gets a cheap non-recording span with usable ids."""

from __future__ import annotations

from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from router.observability.tracing import (
    RequestSpans,
    build_provider,
    request_spans,
    stage,
    tracer,
)

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _carrier(sampled: bool) -> dict[str, str]:
    return {"traceparent": f"00-{PARENT_TRACE}-00f067aa0ba902b7-{'01' if sampled else '00'}"}


def _spans(
    tmp_path: Path, ratio: float, exporter: str = "jsonl"
) -> tuple[TracerProvider, RequestSpans]:
    provider = build_provider(
        exporter=exporter, otlp_endpoint="", jsonl_path=tmp_path / "spans.jsonl"
    )
    return provider, request_spans(provider, exporter, ratio)


def test_unsampled_new_trace_gets_fresh_ids_and_records_nothing(tmp_path: Path) -> None:
    _, spans = _spans(tmp_path, 0.0)
    ids = set()
    for _ in range(50):
        with spans.start("inferline.Predict", {}) as span:
            ctx = span.get_span_context()
            assert not span.is_recording() and ctx.is_valid and not ctx.trace_flags.sampled
            assert trace.get_current_span() is span  # current for stage() and Triton
            ids.add(ctx.trace_id)
        assert trace.get_current_span() is not span
    assert len(ids) == 50


def test_ratio_one_records_every_new_trace_with_stage_children(tmp_path: Path) -> None:
    provider, spans = _spans(tmp_path, 1.0)
    t = tracer(provider)
    with spans.start("inferline.Predict", {}) as span:
        assert span.is_recording()
        with stage(t, "features", span.is_recording()) as child:
            assert child.is_recording()
        with stage(t, "quality", False) as child:
            assert not child.is_recording()
    provider.force_flush()
    lines = (tmp_path / "spans.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"inferline.Predict"' in lines[1]


def test_callers_sampled_flag_is_honoured_whatever_the_ratio(tmp_path: Path) -> None:
    _, spans = _spans(tmp_path, 0.0)
    with spans.start("inferline.Predict", _carrier(True)) as span:
        assert span.is_recording()
        assert f"{span.get_span_context().trace_id:032x}" == PARENT_TRACE
    _, spans = _spans(tmp_path, 1.0)
    with spans.start("inferline.Predict", _carrier(False)) as span:
        assert not span.is_recording()
        assert f"{span.get_span_context().trace_id:032x}" == PARENT_TRACE


def test_no_exporter_records_nothing_but_continues_the_callers_trace(tmp_path: Path) -> None:
    _, spans = _spans(tmp_path, 1.0, exporter="none")
    with spans.start("inferline.Predict", _carrier(True)) as span:
        assert not span.is_recording()
        assert f"{span.get_span_context().trace_id:032x}" == PARENT_TRACE
    with spans.start("inferline.Predict", {"traceparent": "garbage"}) as span:
        assert span.get_span_context().is_valid  # a malformed parent: a fresh trace
