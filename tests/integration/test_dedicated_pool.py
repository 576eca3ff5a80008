"""A dedicated tenant is served by its own Triton process (hard isolation), and
the pool clients follow the routing table all or nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from inferline.v1 import inference_pb2 as pb
from inferline.v1 import inference_pb2_grpc
from router.backends.triton import TritonModelServer, TritonPools
from router.errors import Unavailable
from router.pipeline.catalog import load_version
from router.pipeline.inference import score
from scripts.stack import ROOT, RouterProcess, TritonServer
from scripts.supervisor import free_ports
from tests.integration.conftest import ROUTER_ENV
from tests.integration.test_predict import fraud_candidate


@pytest.fixture(scope="module")
def tritons(
    demo_build: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TritonServer, TritonServer]]:
    """Two Tritons on the demo repository: the shared pool and a dedicated one."""
    repo, logs = demo_build / "model_repository", tmp_path_factory.mktemp("pools")
    with (
        TritonServer(repo, logs / "shared") as shared,
        TritonServer(repo, logs / "dedicated") as dedicated,
    ):
        yield shared, dedicated


def _fraud_successes(triton: TritonServer) -> float:
    text = triton.http_get("/metrics", metrics=True).decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{") and 'model="fraud"' in line
    )


async def test_dedicated_tenant_uses_its_own_triton(
    demo_build: Path, tmp_path: Path, tritons: tuple[TritonServer, TritonServer]
) -> None:
    repo = demo_build / "model_repository"
    table = yaml.safe_load((ROOT / "scripts" / "demo_routing.yaml").read_text())
    shared, dedicated = tritons
    table["pools"] = {"payments": {"grpc": dedicated.grpc_url, "http": dedicated.http_url}}
    table["tenants"]["payments"].update({"isolation": "dedicated", "pool": "payments"})
    (tmp_path / "routing.yaml").write_text(yaml.safe_dump(table))
    env = {
        **ROUTER_ENV,
        "INFERLINE_TRITON__URL": shared.grpc_url,
        "INFERLINE_TRITON__HTTP_URL": shared.http_url,
        "INFERLINE_FEATURES__REPO_PATH": str(demo_build / "feast"),
        "INFERLINE_MODELS__REPOSITORY": str(repo),
        "INFERLINE_ROUTING__TABLE_PATH": str(tmp_path / "routing.yaml"),
    }
    with RouterProcess(env, tmp_path / "router") as router:
        async with grpc.aio.insecure_channel(router.address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            req = pb.PredictRequest(alias="fraud:prod", candidates=[fraud_candidate(58)])
            shared_before, dedicated_before = (
                _fraud_successes(shared),
                _fraud_successes(dedicated),
            )
            for tenant in ("payments",) * 5 + ("demo",) * 3:
                resp = await stub.Predict(
                    req, metadata=(("x-inferline-tenant", tenant),), timeout=10
                )
                assert resp.fallback_level == pb.FALLBACK_LEVEL_PRIMARY
    # Triton publishes counters with a short lag.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (  # noqa: ASYNC110 - polling another process
        _fraud_successes(dedicated) - dedicated_before < 5
        or _fraud_successes(shared) - shared_before < 3
    ):
        await asyncio.sleep(0.2)
    assert _fraud_successes(dedicated) - dedicated_before == 5
    assert _fraud_successes(shared) - shared_before == 3


async def test_pool_sync_is_all_or_nothing_and_retires_replaced_clients(
    demo_build: Path, tritons: tuple[TritonServer, TritonServer]
) -> None:
    shared, dedicated = tritons
    version = load_version(demo_build / "model_repository", "fraud", 2)
    row = np.asarray([version.defaults], dtype=np.float32)
    (down,) = free_ports(1)  # nothing listens here
    pools = TritonPools(shared.grpc_url, shared.http_url, ready_timeout_s=0.5, retire_after_s=0.3)
    await pools.start()
    try:
        await pools.sync({"payments": (dedicated.grpc_url, dedicated.http_url)})
        before = pools.get("payments")
        assert before.url == dedicated.grpc_url
        # A table that moves "payments" and adds a pool that is not up: rejected
        # whole, so "payments" must not have moved either.
        with pytest.raises(Unavailable):
            await pools.sync(
                {
                    "payments": (shared.grpc_url, shared.http_url),
                    "late": (f"127.0.0.1:{down}", None),
                }
            )
        assert pools.get("payments") is before
        with pytest.raises(Unavailable):
            pools.get("late")
        # Accepted: the new client serves at once; the replaced one still
        # answers the requests routed before the swap, then is closed.
        await pools.sync({"payments": (shared.grpc_url, shared.http_url)})
        assert pools.get("payments").url == shared.grpc_url
        await score(pools.get("payments"), version, row, 2.0)
        await score(before, version, row, 2.0)
        await asyncio.sleep(0.5)
        assert before.forwarder is None  # retired
    finally:
        await pools.close()


async def test_a_server_that_never_comes_up_keeps_no_channels() -> None:
    (down,) = free_ports(1)
    server = TritonModelServer(f"127.0.0.1:{down}", f"127.0.0.1:{down}")
    with pytest.raises(Unavailable):
        await server.start(0.3)
    assert server.forwarder is None
