"""bench.chain: the paths to the model and their meters, shared by edge_bench and
overhead. Paired deltas, the XFCC the edge forwards, the CPU meter, and the
fast-lane client against a real TLS server."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench import chain
from bench.loadgen import Samples, summarize
from inferline_edge.certs import EDGE_SPIFFE_ID, DevPKI, tenant_spiffe_id
from router.transport.identity import _xfcc_uri, tenant_from_uri


def _summary(latencies_ms: list[float], errors: dict[str, int] | None = None) -> dict[str, Any]:
    s = Samples([x / 1e3 for x in latencies_ms], collections.Counter(errors or {}), 1.0)
    return summarize(s)


def test_deltas_are_paired_per_repeat_then_median() -> None:
    edge = [_summary([3.0] * 100), _summary([9.0] * 100), _summary([4.0] * 100)]
    router = [_summary([2.5] * 100), _summary([8.0] * 100), _summary([3.8] * 100)]
    d = chain.latency_deltas(edge[0], router[0])
    assert d == pytest.approx({"p50_ms": 0.5, "p95_ms": 0.5, "p99_ms": 0.5})
    # Per-repeat deltas 0.5, 1.0, 0.2 -> median 0.5; a drifting repeat moves both paths.
    med = chain.median_deltas({"edge": edge, "router": router}, "edge", "router")
    assert med["p50_ms"] == pytest.approx(0.5) and med["p99_ms"] == pytest.approx(0.5)


def test_xfcc_is_what_envoy_forwards_and_the_router_reads(tmp_path: Path) -> None:
    pki = DevPKI.create(tmp_path, tenants=[("demo", "cli")], days=1)
    pem = pki.client("demo", "cli").cert.read_bytes()
    value = chain.xfcc_value(pem, tenant_spiffe_id("demo", "cli"), EDGE_SPIFFE_ID)
    by, digest, uri = value.split(";")
    assert by == f"By={EDGE_SPIFFE_ID}" and uri == "URI=spiffe://inferline/tenant/demo/svc/cli"
    assert digest.startswith("Hash=") and len(digest) == 5 + 64  # sha256 hex of the DER
    parsed = _xfcc_uri(value)
    assert parsed is not None and tenant_from_uri(parsed, "spiffe://inferline/tenant/") == "demo"


async def test_cpu_watch_reports_client_and_machine() -> None:
    w = chain.CpuWatch({"this test": [os.getpgid(0)]})
    t0 = time.process_time()
    while time.process_time() - t0 < 0.2:  # burn a little CPU in this process
        pass
    await asyncio.sleep(0.01)
    out = w.stop()
    assert out["wall_s"] >= 0.2 and out["client_s"] >= 0.2
    assert out["this test_s"] >= 0.1  # /proc counts in ticks; the group includes this process
    assert out["machine_busy_pct"] >= 0 and out["others_busy_pct"] >= 0


async def test_fast_lane_pool_speaks_mtls_http1_and_counts_grpc_statuses(tmp_path: Path) -> None:
    """The router path's client against a real TLS server answering with the fast
    lane's own bytes (gRPC over HTTP/1.1: the message chunked, the status in
    trailers); connections kept alive and reused, one request at a time each."""
    import ssl

    from bench.loadgen import closed_loop
    from router.transport.h1_framing import grpc_error, grpc_response
    from router.transport.status import WireStatus

    pki = DevPKI.create(tmp_path / "pki", tenants=[("demo", "cli")], days=1)
    seen: list[bytes] = []
    conns = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await answer(reader, writer)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            seen.append(head)
            assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
            if body[5:] == b"over":
                writer.write(grpc_error(WireStatus("RESOURCE_EXHAUSTED", "over", retry_after=1)))
            else:
                writer.write(grpc_response(b"yes"))
            await writer.drain()

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca.cert)
    server_ctx.load_cert_chain(pki.router.cert, pki.router.key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    tls = (
        pki.ca.cert.read_bytes(),
        pki.edge_client.key.read_bytes(),
        pki.edge_client.cert.read_bytes(),
    )

    def endpoint(body: bytes) -> chain.Endpoint:
        return chain.Endpoint(
            "router", f"127.0.0.1:{port}", "/inferline.v1.InferenceService/Predict", body,
            (("x-inferline-tenant", "demo"),), tls, "router.inferline.local", fast_lane=True,
        )  # fmt: skip

    async with server, contextlib.AsyncExitStack() as stack:
        ok = await endpoint(b"ok")._fast_lane(stack, 5.0)
        assert await ok() == b"yes"
        s = await closed_loop(ok, 4, requests=40)
        assert len(s.latencies_s) == 40 and not s.errors
        over = await endpoint(b"over")._fast_lane(stack, 5.0)
        s = await closed_loop(over, 1, requests=3)
        assert s.errors == {"RESOURCE_EXHAUSTED": 3} and not s.latencies_s
    # What the edge sends: the gRPC request as is, its metadata, a grpc-timeout.
    assert seen[0].startswith(b"POST /inferline.v1.InferenceService/Predict HTTP/1.1\r\n")
    assert b"content-type: application/grpc\r\n" in seen[0]
    assert b"x-inferline-tenant: demo\r\n" in seen[0] and b"grpc-timeout: 5000m\r\n" in seen[0]
    assert 1 + 4 + 1 >= conns >= 2  # one per concurrent caller at most, reused
