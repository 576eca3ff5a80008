"""One request's trace: a span per stage, and the trace id the response echoes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from inferline.v1 import inference_pb2_grpc
from scripts.stack import ROOT, Stack
from tests.integration.conftest import ROUTER_ENV, TENANT
from tests.integration.test_predict import fraud_candidate, pb


@pytest.fixture(scope="module")
def traced(
    demo_build: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Path]]:
    logs = tmp_path_factory.mktemp("traced")
    spans = logs / "spans.jsonl"
    env = {
        **ROUTER_ENV,
        "INFERLINE_TRACING__EXPORTER": "jsonl",
        "INFERLINE_TRACING__SAMPLE_RATIO": "1.0",
        "INFERLINE_TRACING__JSONL_PATH": str(spans),
    }
    with Stack(
        demo_build, logs, routing_table=ROOT / "scripts" / "demo_routing.yaml", router_env=env
    ) as s:
        yield s, spans


def _spans(path: Path, trace_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        )
        mine = [s for s in found if s["trace_id"] == trace_id]
        if any(s["name"] == "inferline.Predict" for s in mine):
            return mine
        time.sleep(0.1)
    return []


@pytest.mark.parametrize(
    "traceparent", [None, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
)
async def test_span_per_stage_and_trace_id_matches(
    traced: tuple[Stack, Path], traceparent: str | None
) -> None:
    stack, path = traced
    assert stack.router is not None
    md = TENANT + ((("traceparent", traceparent),) if traceparent else ())
    async with grpc.aio.insecure_channel(stack.router.address) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        resp = await stub.Predict(
            pb.PredictRequest(alias="fraud:prod", candidates=[fraud_candidate(58)]),
            metadata=md,
            timeout=10,
        )
    if traceparent:
        assert resp.trace_id == traceparent.split("-")[1]
    spans = _spans(path, resp.trace_id)
    by_name = {s["name"]: s for s in spans}
    assert {"inferline.Predict", "auth", "admission", "routing", "features", "inference"} <= set(
        by_name
    )
    root = by_name["inferline.Predict"]
    for stage in ("auth", "admission", "routing", "features", "inference"):
        assert by_name[stage]["parent_id"] == root["span_id"]
    assert root["attributes"]["inferline.tenant"] == "demo"
    assert root["attributes"]["inferline.model"] == "fraud"
    assert root["attributes"]["inferline.version"] == 1
    assert by_name["inference"]["attributes"]["inferline.fallback_level"] == "PRIMARY"
