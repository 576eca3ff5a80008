"""A dedicated tenant is served by its own Triton process (hard isolation)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import yaml

from inferline.v1 import inference_pb2 as pb
from inferline.v1 import inference_pb2_grpc
from scripts.stack import ROOT, RouterProcess, TritonServer
from tests.integration.conftest import ROUTER_ENV
from tests.integration.test_predict import fraud_candidate


def _fraud_successes(triton: TritonServer) -> float:
    text = triton.http_get("/metrics", metrics=True).decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{") and 'model="fraud"' in line
    )


async def test_dedicated_tenant_uses_its_own_triton(demo_build: Path, tmp_path: Path) -> None:
    repo = demo_build / "model_repository"
    table = yaml.safe_load((ROOT / "scripts" / "demo_routing.yaml").read_text())
    with (
        TritonServer(repo, tmp_path / "shared") as shared,
        TritonServer(repo, tmp_path / "dedicated") as dedicated,
    ):
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
