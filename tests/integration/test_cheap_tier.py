"""The INT8 ranker as the ranker's cheap tier, end to end (real Triton + router).

Batch-priority traffic on ``ranker:prod`` is answered by ``ranker_int8``; standard
traffic, and a request pinned to a version, by the FP32 ranker. The scores of
the two tiers stay close (the INT8 accuracy delta is in
docs/benchmarks-quantization.md)."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from inferline.v1 import inference_pb2 as pb
from inferline.v1 import inference_pb2_grpc
from scripts.demo import ranker_request
from scripts.stack import Stack
from tests.integration.conftest import ROUTER_ENV
from triton_models import build as tb
from triton_models import quantize as q

pytestmark = pytest.mark.slow

TABLE = {
    "version": "cheap-tier-test",
    "models": {
        "fraud": {"versions": [1], "aliases": {"prod": 1}},
        "ranker": {
            "versions": [1],
            "aliases": {"prod": 1},
            # Load-based moves are unit-tested; here only the priority rule acts.
            "cheap_tier": {
                "model": q.INT8_MODEL,
                "version": 1,
                "priorities": ["batch"],
                "load_above": None,
            },
        },
        q.INT8_MODEL: {"versions": [1], "aliases": {"prod": 1}},
    },
    "tenants": {
        "demo": {"models": ["fraud", "ranker"]},
        # Pins ranker:prod: a contract the cheap tier must not break.
        "pinned": {"models": ["ranker"], "aliases": {"ranker:prod": 1}},
    },
}


@pytest.fixture(scope="module")
def stack(demo_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    out = tmp_path_factory.mktemp("cheap-build")
    for sub in ("training", "feast"):
        shutil.copytree(demo_build / sub, out / sub)
    for model in ("fraud", "ranker"):
        shutil.copytree(demo_build / "model_repository" / model, out / "model_repository" / model)
    pipeline = pickle.loads((out / "training" / "ranker_v1.pkl").read_bytes())
    q.add_quantized_models(out, out / "model_repository", pipeline, tb.ranker_dataset())
    table = out / "routing.yaml"
    table.write_text(yaml.safe_dump(TABLE))
    # Probes on, as in production: the router turns SERVING only after a canary
    # round has warmed its Triton connections to every routed version, so the
    # first asserted call is not a cold one racing the 50 ms inference cap (on a
    # busy CI box it could be answered by the fallback ladder instead).
    env = {**ROUTER_ENV, "INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "5"}
    with Stack(out, out / "logs", routing_table=table, router_env=env) as s:
        yield s


def _predict(
    stack: Stack, req: pb.PredictRequest, priority: str, tenant: str = "demo"
) -> pb.PredictResponse:
    assert stack.router is not None
    md = (("x-inferline-tenant", tenant), ("x-inferline-priority", priority))
    with grpc.insecure_channel(stack.router.address) as ch:
        resp: pb.PredictResponse = inference_pb2_grpc.InferenceServiceStub(ch).Predict(
            req, metadata=md, timeout=10
        )
    return resp


def test_batch_traffic_goes_to_the_cheap_tier(stack: Stack) -> None:
    req = ranker_request(3, [1, 2, 3, 4])
    cheap = _predict(stack, req, "batch")
    full = _predict(stack, req, "standard")
    assert (cheap.model.name, cheap.model.version) == (q.INT8_MODEL, 1)
    assert (full.model.name, full.model.version) == ("ranker", 1)
    assert not cheap.degraded and not full.degraded
    a = [s.score for s in cheap.scores]
    b = [s.score for s in full.scores]
    assert a != b and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.05


def test_a_pinned_version_is_never_moved(stack: Stack) -> None:
    req = ranker_request(3, [1, 2])
    req.ClearField("alias")
    req.version = "ranker@1"
    resp = _predict(stack, req, "batch")
    assert resp.model.name == "ranker"


def test_a_tenant_pinning_the_alias_is_never_moved(stack: Stack) -> None:
    resp = _predict(stack, ranker_request(3, [1, 2]), "batch", tenant="pinned")
    assert (resp.model.name, resp.model.version) == ("ranker", 1)
