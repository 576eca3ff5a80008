"""The router's Prometheus endpoint, scraped after real traffic."""

from __future__ import annotations

import urllib.request
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferline.v1 import inference_pb2 as pb
from scripts.stack import Stack
from tests.integration.conftest import TENANT
from tests.integration.test_predict import fraud_candidate


def _scrape(stack: Stack) -> dict[str, list[Any]]:
    assert stack.router is not None
    with urllib.request.urlopen(stack.router.metrics_url, timeout=5) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: list[Any], name: str, **labels: str) -> float:
    return float(sum(
        s.value for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ))  # fmt: skip


async def test_requests_stages_and_degraded_are_counted(stack: Stack, stub: Any) -> None:
    before = _scrape(stack)
    ok_before = _value(
        before.get("inferline_requests", []),
        "inferline_requests_total",
        tenant="demo",
        model="fraud",
        code="OK",
    )
    await stub.Predict(
        pb.PredictRequest(alias="fraud:prod", candidates=[fraud_candidate(58)]),
        metadata=TENANT,
        timeout=10,
    )
    await stub.Predict(
        pb.PredictRequest(alias="fraud:prod", candidates=[fraud_candidate(57)]),
        metadata=TENANT,
        timeout=10,
    )  # planted stale row
    with pytest.raises(grpc.aio.AioRpcError):  # NOT_FOUND, counted below
        await stub.Predict(
            pb.PredictRequest(alias="fraud:nope", candidates=[fraud_candidate(1)]),
            metadata=TENANT,
            timeout=10,
        )
    after = _scrape(stack)
    requests = after["inferline_requests"]
    assert (
        _value(requests, "inferline_requests_total", tenant="demo", model="fraud", code="OK")
        - ok_before
        == 2
    )
    assert _value(requests, "inferline_requests_total", tenant="demo", code="NOT_FOUND") >= 1
    stages = after["inferline_stage_duration_seconds"]
    for stage in ("routing", "features", "inference", "total"):
        assert (
            _value(stages, "inferline_stage_duration_seconds_count", stage=stage, model="fraud")
            >= 2
        )
    assert (
        _value(
            after["inferline_degraded"],
            "inferline_degraded_total",
            model="fraud",
            reason="features_stale",
        )
        >= 1
    )
    assert (
        _value(
            after["inferline_feature_freshness"],
            "inferline_feature_freshness_total",
            view="account_features",
            status="STALE",
        )
        >= 1
    )
    assert "inferline_inflight_requests" in after
    # Label values are bounded: an unknown tenant never becomes its own series.
    tenants = {s.labels["tenant"] for s in requests}
    assert tenants <= {"demo", "payments", "feed", "none", "other"}
