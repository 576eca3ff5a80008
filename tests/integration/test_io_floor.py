"""bench.io_floor's floor server does the router's I/O for real: same features,
same model, same score as the router's own answer (on the session's stack)."""

from __future__ import annotations

import http.client
import os
from pathlib import Path

from bench.io_floor import floor_server, fraud_features
from bench.loadgen import ROUTER_METHOD, router_request
from inferline.v1 import inference_pb2
from scripts.stack import Stack


def _post(address: str, body: bytes, headers: dict[str, str]) -> inference_pb2.PredictResponse:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", ROUTER_METHOD, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
    finally:
        conn.close()
    return inference_pb2.PredictResponse.FromString(data)


def test_floor_scores_as_the_router_does(stack: Stack, demo_build: Path) -> None:
    assert stack.router is not None and stack.triton is not None and stack.feast_repo is not None
    features = fraud_features(demo_build)
    assert len(features) == 30
    headers = {"content-type": "application/x-protobuf", "x-inferline-tenant": "demo"}
    with floor_server(stack.feast_repo, stack.triton.http_url, features, dict(os.environ)) as (
        _pid,
        port,
    ):
        for account in (42, 3, 1234):  # fresh rows (id % 50 == 7 is stale by design)
            body = router_request("fraud:prod", account)
            routed = _post(stack.router.bridge_address, body, headers)
            floor = _post(f"127.0.0.1:{port}", body, headers)
            assert not routed.degraded  # the router read every feature: a like-for-like score
            assert routed.model.name == floor.model.name == "fraud"
            assert routed.model.version == floor.model.version == 1
            assert len(floor.scores) == 1
            assert abs(floor.scores[0].score - routed.scores[0].score) < 1e-6
