"""``make demo``: start the whole stack on the embedded defaults, send real traffic, stop.

Prints scores for both demo models (fraud GBDT, ranker DNN), shows how stale
and missing features surface in the response, shows a few error statuses, and
measures latency through the router and directly against Triton side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferline.v1 import inference_pb2 as pb
from inferline.v1 import inference_pb2_grpc
from inferline_edge.certs import EDGE_DNS, DevPKI
from scripts.edge_stack import FullStack
from scripts.stack import ROOT
from scripts.supervisor import StackError

# Behind the edge the tenant is the client certificate's SPIFFE id: no header.
TENANT: tuple[tuple[str, str], ...] = ()
FRESHNESS = {
    v.number: v.name.removeprefix("FRESHNESS_STATUS_") for v in pb.FreshnessStatus.DESCRIPTOR.values
}


def _v(x: float | int) -> pb.Value:
    return pb.Value(int64_value=x) if isinstance(x, int) else pb.Value(double_value=x)


def fraud_request(accounts: list[int]) -> pb.PredictRequest:
    return pb.PredictRequest(
        alias="fraud:prod",
        candidates=[
            pb.Candidate(
                candidate_id=f"acct-{a}",
                entities={"account_id": _v(a)},
                features={
                    "amount": _v(129.99),
                    "hour_of_day": _v(3.0),
                    "is_international": _v(1.0),
                },
            )
            for a in accounts
        ],
        options=pb.PredictOptions(return_timings=True),
    )


def ranker_request(user: int, items: list[int]) -> pb.PredictRequest:
    return pb.PredictRequest(
        alias="ranker:prod",
        candidates=[
            pb.Candidate(
                candidate_id=f"item-{it}",
                entities={"user_id": _v(user), "item_id": _v(it)},
                features={"position": _v(float(i)), "hour_of_day": _v(20.0)},
            )
            for i, it in enumerate(items)
        ],
    )


def show(title: str, resp: pb.PredictResponse) -> None:
    m = resp.model
    alias = f" (alias {m.alias})" if m.alias else ""
    print(
        f"\n== {title}: {m.name}@{m.version}{alias}  degraded={resp.degraded} "
        f"{list(resp.degraded_reasons)}  trace={resp.trace_id}"
    )
    for s in resp.scores:
        fresh = ", ".join(f"{f.feature_view}={FRESHNESS[f.status]}" for f in s.freshness)
        print(f"   {s.candidate_id:>10}  score={s.score:.6f}   [{fresh}]")
    if resp.timings:
        print(
            "   stages: "
            + "  ".join(f"{t.stage}={t.duration_us / 1000:.2f}ms" for t in resp.timings)
        )


async def latency(call: Any, n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        await call()
        out[i] = time.perf_counter() - t0
    return out * 1000


def fmt(ms: np.ndarray) -> str:
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return f"p50={p50:6.2f} ms  p95={p95:6.2f} ms  p99={p99:6.2f} ms"


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence this process's stderr (fd 2) for a call expected to fail: gRPC's
    C core logs a refused handshake there itself ("Corruption detected", ...),
    which reads like a fault in a demo that shows the refusal on purpose."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _tls_channel(address: str, pki: DevPKI, tenant: str | None, svc: str) -> grpc.aio.Channel:
    """An mTLS channel to the edge with a tenant's client certificate (or none)."""
    key = cert = None
    if tenant is not None:
        pair = pki.client(tenant, svc)
        key, cert = pair.key.read_bytes(), pair.cert.read_bytes()
    creds = grpc.ssl_channel_credentials(pki.ca.cert.read_bytes(), key, cert)
    return grpc.aio.secure_channel(
        address, creds, options=[("grpc.ssl_target_name_override", EDGE_DNS)]
    )


async def run(full: FullStack, pki: DevPKI, n: int) -> None:
    assert full.edge is not None and full.base is not None and full.base.triton is not None
    edge = full.edge.mtls_address
    async with (
        _tls_channel(edge, pki, "demo", "cli") as ch,
        _tls_channel(edge, pki, "payments", "checkout") as pay_ch,
        grpc.aio.insecure_channel(full.base.triton.grpc_url) as tch,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        pay = inference_pb2_grpc.InferenceServiceStub(pay_ch)
        show(
            "fraud, fresh + stale + missing account",
            await stub.Predict(fraud_request([42, 57, 999_999]), metadata=TENANT, timeout=5),
        )
        resp = await stub.Predict(
            ranker_request(8, [3, 14, 15, 92, 65]), metadata=TENANT, timeout=5
        )
        show("ranker, one user x 5 items", resp)
        ranked = sorted(resp.scores, key=lambda s: -s.score)
        print("   ranking: " + " > ".join(s.candidate_id for s in ranked))

        print("\n== errors are clean gRPC statuses")
        for title, req, md in [
            (
                "unknown alias",
                pb.PredictRequest(alias="fraud:nope", candidates=fraud_request([1]).candidates),
                TENANT,
            ),
            (
                "NaN feature",
                pb.PredictRequest(
                    alias="fraud:prod",
                    candidates=[
                        pb.Candidate(
                            entities={"account_id": _v(1)},
                            features={
                                "amount": _v(float("nan")),
                                "hour_of_day": _v(1.0),
                                "is_international": _v(0.0),
                            },
                        )
                    ],
                ),
                TENANT,
            ),
            (
                "forged XFCC header",
                fraud_request([1]),
                (("x-forwarded-client-cert", "URI=spiffe://inferline/tenant/payments/svc/x"),),
            ),
        ]:
            try:
                resp = await stub.Predict(req, metadata=md, timeout=5)
                print(
                    f"   {title:18} -> OK, still tenant demo (edge replaced the header): "
                    f"{resp.model.name}@{resp.model.version}"
                )
            except grpc.aio.AioRpcError as e:
                print(f"   {title:18} -> {e.code().name}: {e.details()}")
        try:
            await pay.Predict(ranker_request(1, [1]), timeout=5)
        except grpc.aio.AioRpcError as e:
            print(
                f"   {'model not granted':18} -> {e.code().name}: {e.details()} (tenant payments)"
            )
        async with _tls_channel(edge, pki, None, "") as anon:
            try:
                with _quiet_stderr():
                    await inference_pb2_grpc.InferenceServiceStub(anon).Predict(
                        fraud_request([1]), timeout=5
                    )
            except grpc.aio.AioRpcError as e:
                print(f"   {'no client cert':18} -> {e.code().name} (TLS handshake refused)")

        # Latency, router vs direct Triton on the same feature row, sequential calls.
        meta = json.loads(
            (full.base.build_dir / "model_repository" / "fraud" / "1" / "metadata.json").read_text()
        )
        row = np.asarray([[f["default"] for f in meta["features"]]], dtype=np.float32)
        infer = service_pb2.ModelInferRequest(model_name="fraud", model_version="1")
        t = infer.inputs.add(name=meta["tensors"]["input"], datatype="FP32", shape=list(row.shape))
        del t
        infer.raw_input_contents.append(row.tobytes())
        triton = service_pb2_grpc.GRPCInferenceServiceStub(tch)
        one = fraud_request([42])
        one.options.return_timings = False
        rank = ranker_request(8, list(range(1, 21)))

        async def via_router() -> None:
            await stub.Predict(one, metadata=TENANT, timeout=5)

        async def via_router_ranker() -> None:
            await stub.Predict(rank, metadata=TENANT, timeout=5)

        async def direct() -> None:
            await triton.ModelInfer(infer, timeout=5)

        for call in (via_router, direct):  # warm up both paths
            await latency(call, 50)
        print(f"\n== latency, {n} sequential calls each (this machine, noisy)")
        r = await latency(via_router, n)
        d = await latency(direct, n)
        k = await latency(via_router_ranker, n)
        print(f"   fraud via Envoy (mTLS) + router  {fmt(r)}")
        print(f"   fraud direct Triton              {fmt(d)}")
        print(f"   stack overhead                   p50={np.median(r) - np.median(d):.2f} ms")
        print(
            "     (includes tenant demo's cluster-wide quota check in the rate-limit service;"
            "\n      without it: `python -m bench.overhead`, docs/benchmarks.md)"
        )
        print(f"   ranker via Envoy + router (20 candidates)  {fmt(k)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args(argv)
    logs = (args.build / "logs" / time.strftime("demo-%Y%m%d-%H%M%S")).resolve()
    pki = DevPKI.create(
        logs / "pki", tenants=[("demo", "cli"), ("payments", "checkout"), ("feed", "web")]
    )
    try:
        with FullStack(args.build, logs, pki) as full:
            assert full.edge is not None and full.router is not None
            print(
                f"stack up: edge (mTLS) {full.edge.mtls_address} -> router "
                f"{full.router.address} -> Triton; client certs in {logs / 'pki'}"
            )
            asyncio.run(run(full, pki, args.requests))
    except StackError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print("\nstack stopped; logs in", logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
