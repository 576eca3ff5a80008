"""Regionalization: two regional routers over one Triton; residency decides who is served.

Tenant ``demo`` is pinned to ``us-east`` in the routing table, ``payments`` is
unpinned. The eu-west router refuses ``demo`` (FAILED_PRECONDITION, for Predict
and the KServe pass-through alike) and serves ``payments``; the us-east router
serves both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as tgrpc
import yaml
from tritonclient.utils import InferenceServerException

from inferline.v1 import inference_pb2_grpc
from scripts.demo import fraud_request
from scripts.stack import ROOT, RouterProcess, Stack
from tests.integration.conftest import ROUTER_ENV


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def regional(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, RouterProcess]]:
    assert stack.triton is not None and stack.feast_repo is not None
    logs = tmp_path_factory.mktemp("regions")
    table = yaml.safe_load((ROOT / "scripts" / "demo_routing.yaml").read_text())
    table["tenants"]["demo"]["regions"] = ["us-east"]
    path = logs / "routing.yaml"
    path.write_text(yaml.safe_dump(table))
    routers: dict[str, RouterProcess] = {}
    try:
        for region in ("us-east", "eu-west"):
            env = {
                **ROUTER_ENV,
                "INFERLINE_TRITON__URL": stack.triton.grpc_url,
                "INFERLINE_TRITON__HTTP_URL": stack.triton.http_url,
                "INFERLINE_FEATURES__REPO_PATH": str(stack.feast_repo),
                "INFERLINE_MODELS__REPOSITORY": str(stack.build_dir / "model_repository"),
                "INFERLINE_ROUTING__TABLE_PATH": str(path),
                "INFERLINE_REGION__NAME": region,
                "INFERLINE_METRICS__ENABLED": "false",
            }
            # From a worker thread: no fork after this process used gRPC.
            routers[region] = await asyncio.to_thread(RouterProcess(env, logs / region).start)
        yield routers
    finally:
        for r in routers.values():
            await asyncio.to_thread(r.stop)


async def _predict(address: str, tenant: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as ch:
        try:
            resp = await inference_pb2_grpc.InferenceServiceStub(ch).Predict(
                fraud_request([1, 2]), metadata=(("x-inferline-tenant", tenant),), timeout=10
            )
        except grpc.aio.AioRpcError as e:
            assert "residency" in (e.details() or ""), e.details()
            return e.code()
    assert len(resp.scores) == 2
    return grpc.StatusCode.OK


async def test_pinned_tenant_refused_outside_its_region(
    regional: dict[str, RouterProcess],
) -> None:
    us, eu = regional["us-east"].address, regional["eu-west"].address
    assert await _predict(us, "demo") == grpc.StatusCode.OK
    assert await _predict(eu, "demo") == grpc.StatusCode.FAILED_PRECONDITION
    assert await _predict(eu, "payments") == grpc.StatusCode.OK  # unpinned: served anywhere
    assert await _predict(us, "payments") == grpc.StatusCode.OK


def test_kserve_passthrough_respects_residency(regional: dict[str, RouterProcess]) -> None:
    eu = tgrpc.InferenceServerClient(regional["eu-west"].address)
    us = tgrpc.InferenceServerClient(regional["us-east"].address)
    x = np.zeros((1, 33), np.float32)
    inp = tgrpc.InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    ok = us.infer("fraud", [inp], headers={"x-inferline-tenant": "demo"}, client_timeout=10)
    assert ok.as_numpy("output__0") is not None
    with pytest.raises(InferenceServerException) as exc:
        eu.infer("fraud", [inp], headers={"x-inferline-tenant": "demo"}, client_timeout=10)
    assert exc.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert eu.is_model_ready("fraud", headers={"x-inferline-tenant": "payments"})
