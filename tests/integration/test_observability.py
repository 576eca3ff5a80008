"""Traces (a span per stage, trace id echoed), drift and data quality, end to end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from inferline.v1 import inference_pb2 as pb
from inferline.v1 import inference_pb2_grpc
from scripts.stack import ROOT, Stack
from tests.integration.conftest import ROUTER_ENV, TENANT
from tests.integration.test_predict import fraud_candidate


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
        "INFERLINE_QUALITY__DRIFT_WINDOW": "400",
        "INFERLINE_QUALITY__DRIFT_MIN_SAMPLES": "200",
        "INFERLINE_QUALITY__DRIFT_SAMPLE_EVERY": "1",  # counts rows exactly
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


def _psi(stack: Stack) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    assert stack.router is not None
    with urllib.request.urlopen(stack.router.metrics_url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "inferline_drift_psi" and s.labels["model"] == "fraud":
                out[s.labels["feature"]] = s.value
    return out


async def _send(stack: Stack, shift: float, rng: np.random.Generator) -> None:
    assert stack.router is not None
    ids = [i for i in range(1, 5001) if i % 50 != 7]
    async with grpc.aio.insecure_channel(stack.router.address) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        for _ in range(25):  # 25 x 16 rows = one full window
            cands = [
                fraud_candidate(
                    int(rng.choice(ids)),
                    amount=float(rng.gamma(2.0, 40.0)) + shift,
                    hour=int(rng.integers(0, 24)),
                    intl=int(rng.random() < 0.15),
                )
                for _ in range(16)
            ]
            resp = await stub.Predict(
                pb.PredictRequest(version="fraud@1", candidates=cands), metadata=TENANT, timeout=10
            )
            assert len(resp.scores) == 16


async def test_drift_crosses_threshold_only_for_drifted_traffic(traced: tuple[Stack, Path]) -> None:
    stack, _ = traced
    rng = np.random.default_rng(7)
    await _send(stack, 0.0, rng)
    calm = _psi(stack)
    assert calm["amount"] < 0.1, calm["amount"]
    await _send(stack, 150.0, rng)  # amounts shifted up, still inside the DQ range
    drifted = _psi(stack)
    assert drifted["amount"] > 0.25, drifted["amount"]
    assert drifted["account_age_days"] < 0.1  # untouched features stay calm


async def test_out_of_profile_request_feature_is_rejected_and_counted(
    traced: tuple[Stack, Path],
) -> None:
    stack, _ = traced
    assert stack.router is not None
    async with grpc.aio.insecure_channel(stack.router.address) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        for bad in (fraud_candidate(58, hour=31), fraud_candidate(58, amount=1e6)):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.Predict(
                    pb.PredictRequest(alias="fraud:prod", candidates=[bad]),
                    metadata=TENANT,
                    timeout=10,
                )
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "outside the model's accepted range" in (exc.value.details() or "")
