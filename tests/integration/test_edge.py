"""The edge, for real: Envoy 1.40 + the xDS control plane + the rate-limit service + Redis.

Upstream is a small in-process TLS echo server (``inferline_edge.devtools``: it
requires Envoy's client certificate and records what reached it), so these tests
pin the edge's contract independently of the router; the last test runs the whole
chain with the real router and Triton. Every load loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as tgrpc
import yaml
from grpc_status import rpc_status

from inferline.v1 import inference_pb2_grpc
from inferline_edge.certs import EDGE_DNS, EDGE_SPIFFE_ID, ROUTER_DNS, DevPKI
from inferline_edge.devtools import SLEEP_HEADER, EchoUpstream, EdgeClient, Result, Seen
from scripts.demo import fraud_request, ranker_request
from scripts.edge_stack import EdgeStack, FullStack

CLIENTS = [
    ("quiet", "api"),
    ("noisy", "api"),
    ("metered", "api"),
    ("live", "api"),
    ("failopen", "api"),
    ("quiet", "rogue"),
    ("ghost", "api"),
]

TENANTS: dict[str, Any] = {
    "version": "test-1",
    "ratelimit_service": {"timeout_ms": 50, "failure_mode_deny": False},
    "tenants": {
        "quiet": {
            "identities": ["spiffe://inferline/tenant/quiet/svc/api"],
            "jwt_subjects": ["svc-*"],
            "rate_limit": {"requests_per_second": 100, "burst": 100},
        },
        "noisy": {
            "identities": ["spiffe://inferline/tenant/noisy/svc/*"],
            "rate_limit": {"requests_per_second": 20, "burst": 5},
        },
        "metered": {
            "identities": ["spiffe://inferline/tenant/metered/svc/*"],
            "rate_limit": {"requests_per_second": 1000, "burst": 1000},
            "quota_per_minute": 20,
        },
        "live": {
            "identities": ["spiffe://inferline/tenant/live/svc/*"],
            "rate_limit": {"requests_per_second": 1000, "burst": 1000},
        },
        "failopen": {
            "identities": ["spiffe://inferline/tenant/failopen/svc/*"],
            "rate_limit": {"requests_per_second": 1000, "burst": 1000},
            "quota_per_minute": 3,
        },
    },
}


@dataclass
class Edge:
    pki: DevPKI
    stack: EdgeStack
    upstream: EchoUpstream
    tenants_path: Path

    def client(self, tenant: str | None, svc: str = "api", **kw: Any) -> EdgeClient:
        if tenant is None:
            return EdgeClient(self.pki, self.stack.mtls_address)
        return EdgeClient(self.pki, self.stack.mtls_address, (tenant, svc), **kw)

    def jwt_client(self) -> EdgeClient:
        return EdgeClient(self.pki, self.stack.jwt_address)

    def route_version(self) -> str:
        assert self.stack.envoy is not None
        return self.stack.envoy.config_versions()["dynamic_route_configs/inferline"]

    def write_tenants(self, data: dict[str, Any]) -> None:
        tmp = self.tenants_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(data))
        os.replace(tmp, self.tenants_path)  # atomic: the watcher never sees half a file

    def wait_route_change(self, old: str, timeout_s: float = 5.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.route_version() != old:
                return time.monotonic() - t0
            time.sleep(0.02)
        raise AssertionError(f"route version still {old} after {timeout_s} s")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    pki = DevPKI.create(tmp_path_factory.mktemp("pki"), tenants=CLIENTS, days=1)
    pki.issue_client("quiet", "api", other_ca=True, days=1)
    return pki


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def edge(pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    upstream = EchoUpstream(pki)
    address = await upstream.start()
    logs = tmp_path_factory.mktemp("edge-logs")
    tenants_path = logs / "tenants.yaml"
    tenants_path.write_text(yaml.safe_dump(TENANTS))
    stack = EdgeStack(logs, pki, address, tenants=tenants_path, access_log=True)
    try:
        await asyncio.to_thread(stack.start)
        yield Edge(pki, stack, upstream, tenants_path)
    finally:
        await asyncio.to_thread(stack.stop)
        assert upstream.server is not None
        await upstream.server.stop(0)


@contextlib.contextmanager
def count_new(seen: list[Seen]) -> Iterator[list[Seen]]:
    start = len(seen)
    new: list[Seen] = []
    yield new
    new.extend(seen[start:])


async def test_valid_cert_reaches_upstream_with_sanitized_identity(edge: Edge) -> None:
    c = edge.client("quiet")
    forged = (
        ("x-forwarded-client-cert", "By=x;URI=spiffe://inferline/tenant/metered/svc/api"),
        ("x-inferline-tenant", "metered"),
        ("x-inferline-jwt-payload", base64.urlsafe_b64encode(b'{"tenant":"metered"}').decode()),
        ("x-inferline-priority", "batch"),
        ("x-envoy-fault-abort-request", "503"),  # no fault filter: must be inert
    )
    try:
        r = await c.call(forged)
    finally:
        await c.close()
    assert r.code == grpc.StatusCode.OK, r
    assert r.body is not None
    md, peer = r.body["metadata"], r.body["peer"]
    assert md["x-inferline-tenant"] == "quiet"
    assert "x-inferline-jwt-payload" not in md
    xfcc = md["x-forwarded-client-cert"]
    assert "," not in xfcc and "metered" not in xfcc  # one element: Envoy's, not the client's
    assert xfcc.endswith(";URI=spiffe://inferline/tenant/quiet/svc/api")
    assert xfcc.startswith(f"By={EDGE_SPIFFE_ID};Hash=")
    assert md["x-inferline-priority"] == "batch"  # passes through to the router
    assert peer == [EDGE_SPIFFE_ID]  # Envoy -> upstream is mTLS with the edge identity


@pytest.mark.parametrize(
    ("sent", "expected"), [("critical", "critical"), ("urgent", "standard"), (None, "standard")]
)
async def test_priority_class_is_normalised(edge: Edge, sent: str | None, expected: str) -> None:
    c = edge.client("quiet")
    try:
        r = await c.call((("x-inferline-priority", sent),) if sent else ())
    finally:
        await c.close()
    assert r.code == grpc.StatusCode.OK and r.body is not None
    assert r.body["metadata"]["x-inferline-priority"] == expected


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("no-cert", grpc.StatusCode.UNAVAILABLE),  # TLS handshake refused
        ("other-ca", grpc.StatusCode.UNAVAILABLE),  # chain does not verify
        ("unknown-tenant", grpc.StatusCode.PERMISSION_DENIED),  # RBAC: no policy
        ("unlisted-service", grpc.StatusCode.PERMISSION_DENIED),  # RBAC: identity not allowed
    ],
)
async def test_rejected_at_edge(edge: Edge, who: str, expected: grpc.StatusCode) -> None:
    c = {
        "no-cert": lambda: edge.client(None),
        "other-ca": lambda: edge.client("quiet", other_ca=True),
        "unknown-tenant": lambda: edge.client("ghost"),
        "unlisted-service": lambda: edge.client("quiet", "rogue"),
    }[who]()
    try:
        with count_new(edge.upstream.seen) as new:
            r = await c.call()
    finally:
        await c.close()
    assert r.code == expected, r
    assert new == []  # nothing reached the upstream


async def test_unknown_method_is_unimplemented(edge: Edge) -> None:
    c = edge.client("quiet")
    try:
        call = c.channel.unary_unary("/inferline.v1.AdminService/Drop")(b"", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
    finally:
        await c.close()
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_jwt_path(edge: Edge) -> None:
    c = edge.jwt_client()
    token = edge.pki.sign_jwt("quiet", "svc-batch")
    try:
        ok = await c.call(
            (
                ("authorization", f"Bearer {token}"),
                ("x-inferline-tenant", "noisy"),
                ("x-forwarded-client-cert", "URI=spiffe://inferline/tenant/noisy/svc/a"),
            )
        )
        missing = await c.call()
        tampered = await c.call((("authorization", f"Bearer {token[:-6]}AAAAAA"),))
        expired = await c.call(
            (("authorization", f"Bearer {edge.pki.sign_jwt('quiet', 'svc-a', ttl_s=-120)}"),)
        )
        wrong_sub = await c.call(
            (("authorization", f"Bearer {edge.pki.sign_jwt('quiet', 'human')}"),)
        )
        no_jwt_tenant = await c.call(
            (("authorization", f"Bearer {edge.pki.sign_jwt('noisy', 'svc-a')}"),)
        )
    finally:
        await c.close()
    assert ok.code == grpc.StatusCode.OK, ok
    assert ok.body is not None
    md = ok.body["metadata"]
    assert md["x-inferline-tenant"] == "quiet"
    assert "x-forwarded-client-cert" not in md and "authorization" not in md
    raw = md["x-inferline-jwt-payload"]
    claims = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    assert claims["tenant"] == "quiet" and claims["sub"] == "svc-batch"
    assert missing.code == grpc.StatusCode.UNAUTHENTICATED
    assert tampered.code == grpc.StatusCode.UNAUTHENTICATED
    assert expired.code == grpc.StatusCode.UNAUTHENTICATED
    assert wrong_sub.code == grpc.StatusCode.PERMISSION_DENIED
    assert no_jwt_tenant.code == grpc.StatusCode.PERMISSION_DENIED


async def test_jwt_cache_skips_only_the_signature_check(edge: Edge) -> None:
    """Envoy keeps verified tokens (listeners.JWT_CACHE_SIZE): a token seen before
    is answered from the cache, and a cached token still expires on time. This
    one expired 28 s ago, inside the 30 s clock skew, so it is accepted (and
    cached); 3 s later it is past the skew and refused although it is cached."""
    assert edge.stack.envoy is not None
    hits = "http.public_jwt.jwt_authn.jwt_cache_hit"
    c = edge.jwt_client()
    token = edge.pki.sign_jwt("quiet", "svc-cache", ttl_s=-28)
    header = (("authorization", f"Bearer {token}"),)
    try:
        before = edge.stack.envoy.stats(hits).get(hits, 0)
        first = await c.call(header)
        again = await c.call(header)
        after = edge.stack.envoy.stats(hits).get(hits, 0)
        await asyncio.sleep(3.2)
        late = await c.call(header)
    finally:
        await c.close()
    assert first.code == grpc.StatusCode.OK, first
    assert again.code == grpc.StatusCode.OK, again
    assert after - before >= 1  # the second call came from the cache
    assert late.code == grpc.StatusCode.UNAUTHENTICATED, late


async def _paced(client: EdgeClient, rate: float, duration_s: float) -> tuple[list[Result], float]:
    """Fire ``rate`` requests per second for ``duration_s`` without waiting for
    answers (an open loop, like real independent callers); return results and the
    span from first to last send."""
    n = int(rate * duration_s)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks = []
    last = t0
    for i in range(n):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        last = loop.time()
        tasks.append(asyncio.create_task(client.call(deadline_s=10)))
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    return list(results), last - t0


async def test_local_rate_limit_isolates_tenants(edge: Edge) -> None:
    noisy, quiet = edge.client("noisy"), edge.client("quiet")
    noisy_cfg = TENANTS["tenants"]["noisy"]["rate_limit"]
    rps, burst = noisy_cfg["requests_per_second"], noisy_cfg["burst"]
    await asyncio.sleep(1.0)  # buckets full again after earlier tests
    try:
        (loud, span), (calm, _) = await asyncio.gather(
            _paced(noisy, 3 * rps, 3.0), _paced(quiet, 25, 3.0)
        )
    finally:
        await noisy.close()
        await quiet.close()
    admitted = sum(r.code == grpc.StatusCode.OK for r in loud)
    refused = [r for r in loud if r.code != grpc.StatusCode.OK]
    expected = burst + rps * span
    assert abs(admitted - expected) <= 0.1 * expected, (admitted, expected, span)
    assert {r.code for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    sample = refused[0]
    assert sample.trailers.get("retry-after") == "1"
    assert sample.error is not None
    status = rpc_status.from_call(sample.error)  # QuotaFailure detail attached at the edge
    assert status is not None and status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert any(d.type_url.endswith("google.rpc.QuotaFailure") for d in status.details)
    assert all(r.code == grpc.StatusCode.OK for r in calm), {r.code for r in calm}
    print(
        f"\nlocal rate limit: admitted {admitted} of {len(loud)}, expected {expected:.1f} "
        f"(burst {burst} + {rps}/s x {span:.2f} s); quiet tenant {len(calm)}/{len(calm)} OK"
    )


async def test_quota_through_global_rate_limit_service(edge: Edge) -> None:
    assert edge.stack.envoy is not None
    c, free = edge.client("metered"), edge.client("quiet")
    limit = TENANTS["tenants"]["metered"]["quota_per_minute"]
    calls = "cluster.router.ratelimit.ok"
    try:
        before = edge.stack.envoy.stats("ratelimit.ok").get(calls, 0)
        assert (await free.call()).code == grpc.StatusCode.OK
        # A tenant without a quota costs no rate-limit-service call at all.
        assert edge.stack.envoy.stats("ratelimit.ok").get(calls, 0) == before
        results = [await c.call() for _ in range(limit + 10)]
    finally:
        await c.close()
        await free.close()
    ok = [r for r in results if r.code == grpc.StatusCode.OK]
    over = [r for r in results if r.code != grpc.StatusCode.OK]
    assert len(ok) == limit  # sliding window in Redis: exact for sequential calls
    assert {r.code for r in over} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    t = over[0].trailers
    assert int(t["retry-after"]) >= 1
    assert t["x-ratelimit-limit"].startswith(f"{limit}, {limit};w=60")
    assert t["x-ratelimit-remaining"] == "0"
    assert over[0].error is not None
    status = rpc_status.from_call(over[0].error)
    assert status is not None and "quota" in status.message
    kinds = {d.type_url.rsplit(".", 1)[-1] for d in status.details}
    assert kinds == {"QuotaFailure", "RetryInfo"}


async def test_config_change_reaches_envoy_without_failing_in_flight(edge: Edge) -> None:
    before = edge.route_version()
    quiet, live = edge.client("quiet"), edge.client("live")
    slow = asyncio.create_task(quiet.call(((SLEEP_HEADER, "1500"),), deadline_s=10))
    await asyncio.sleep(0.2)  # in flight at the upstream
    changed = json.loads(json.dumps(TENANTS))
    changed["version"] = "test-2"
    changed["tenants"]["live"]["rate_limit"] = {"requests_per_second": 1, "burst": 1}
    steady: list[Result] = []
    t_edit = time.monotonic()
    edge.write_tenants(changed)
    try:
        propagation = 0.0
        while time.monotonic() - t_edit < 5.0:
            steady.append(await quiet.call())
            if edge.route_version() != before:
                propagation = time.monotonic() - t_edit
                break
            await asyncio.sleep(0.02)
        assert propagation > 0, "route configuration never changed"
        after = [await live.call() for _ in range(5)]
        in_flight = await slow
    finally:
        edge.write_tenants(TENANTS)
        await asyncio.to_thread(edge.wait_route_change, edge.route_version())
        await quiet.close()
        await live.close()
    print(f"\nxDS propagation (file write -> Envoy route version): {propagation * 1000:.0f} ms")
    assert propagation < 2.0
    assert in_flight.code == grpc.StatusCode.OK
    assert all(r.code == grpc.StatusCode.OK for r in steady)
    assert [r.code for r in after].count(grpc.StatusCode.OK) == 1  # burst 1 now
    assert edge.stack.xds is not None
    status = edge.stack.xds.status()
    assert status["label"] == "test-1"  # restored
    node = next(iter(status["nodes"].values()))
    route = node["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]
    assert route["acked"] == route["sent"] and "nacked" not in route


async def test_invalid_config_keeps_last_good(edge: Edge) -> None:
    before = edge.route_version()
    bad = json.loads(json.dumps(TENANTS))
    bad["tenants"]["quiet"]["identities"] = ["spiffe://inferline/tenant/noisy/svc/api"]
    edge.write_tenants(bad)
    try:
        assert edge.stack.xds is not None
        for _ in range(100):  # the watcher polls every 200 ms
            if edge.stack.xds.status()["last_error"] is not None:
                break
            await asyncio.sleep(0.05)
        error = edge.stack.xds.status()["last_error"]
        assert error is not None and "must be spiffe://inferline/tenant/quiet/svc/" in error
        assert edge.route_version() == before
        c = edge.client("quiet")
        try:
            assert (await c.call()).code == grpc.StatusCode.OK
        finally:
            await c.close()
    finally:
        edge.write_tenants(TENANTS)


async def test_ratelimit_service_down_fails_open(edge: Edge) -> None:
    """Documented choice (docs/edge.md): quota enforcement fails open, bounded by the
    50 ms timeout; token buckets (inside Envoy) keep working."""
    assert edge.stack.ratelimit is not None and edge.stack.envoy is not None
    assert edge.stack.redis is not None
    c = edge.client("failopen")
    stats = edge.stack.envoy.stats
    try:
        first = [await c.call() for _ in range(4)]
        assert [r.code for r in first].count(grpc.StatusCode.OK) == 3  # quota 3 enforced
        allowed0 = stats("ratelimit.failure_mode_allowed")
        # 1. service killed: connection refused -> allowed at once
        os.kill(edge.stack.ratelimit.pid, signal.SIGKILL)
        killed = [await c.call() for _ in range(5)]
        # 2. service back on its port: the quota (kept in Redis) is enforced again
        await asyncio.to_thread(edge.stack.restart_ratelimit)
        back = await c.call()
        # 3. service hung (SIGSTOP): each call waits for the 50 ms timeout, then passes
        os.kill(edge.stack.ratelimit.pid, signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            hung = [await c.call() for _ in range(3)]
            hung_ms = (time.perf_counter() - t0) / 3 * 1000
        finally:
            os.kill(edge.stack.ratelimit.pid, signal.SIGCONT)
        # 4. Redis hung: the service answers UNAVAILABLE after its 20 ms budget
        os.kill(edge.stack.redis.pid, signal.SIGSTOP)
        try:
            redis_hung = [await c.call() for _ in range(3)]
        finally:
            os.kill(edge.stack.redis.pid, signal.SIGCONT)
        allowed1 = stats("ratelimit.failure_mode_allowed")
    finally:
        await c.close()
    assert all(r.code == grpc.StatusCode.OK for r in killed)
    assert back.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert all(r.code == grpc.StatusCode.OK for r in hung)
    assert all(r.code == grpc.StatusCode.OK for r in redis_hung)
    assert hung_ms < 500, hung_ms
    key = "cluster.router.ratelimit.failure_mode_allowed"
    assert allowed1.get(key, 0) - allowed0.get(key, 0) >= len(killed) + len(hung) + len(redis_hung)
    print(f"\nrate-limit service hung: {hung_ms:.0f} ms per call (timeout 50 ms), fail open")


async def test_ratelimit_service_protocol(edge: Edge) -> None:
    """ShouldRateLimit as Envoy calls it: hits_addend, unknown tenants, other domains."""
    from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import (
        RateLimitDescriptor,
        RateLimitDescriptorEntry,
    )
    from envoy_data_plane.envoy.service.ratelimit.v3 import (
        RateLimitRequest,
        RateLimitResponse,
        RateLimitResponseCode,
    )

    assert edge.stack.ratelimit is not None
    limit = TENANTS["tenants"]["metered"]["quota_per_minute"]

    def req(tenant: str, hits: int = 1, domain: str = "inferline") -> RateLimitRequest:
        entry = RateLimitDescriptorEntry(key="tenant", value=tenant)
        return RateLimitRequest(
            domain=domain, hits_addend=hits, descriptors=[RateLimitDescriptor(entries=[entry])]
        )

    async with grpc.aio.insecure_channel(edge.stack.ratelimit.address) as ch:
        rpc = ch.unary_unary(
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            request_serializer=bytes,
            response_deserializer=RateLimitResponse.parse,
        )
        fresh = f"t{time.monotonic_ns()}"  # not in the file: no quota
        assert (await rpc(req(fresh), timeout=5)).overall_code == RateLimitResponseCode.OK
        other = await rpc(req("metered", domain="other"), timeout=5)
        assert other.overall_code == RateLimitResponseCode.OK
        # metered spent its quota in an earlier test (or not): a batch bigger than
        # the whole quota never fits, and refusing it costs nothing.
        big = await rpc(req("metered", hits=limit + 1), timeout=5)
        assert big.overall_code == RateLimitResponseCode.OVER_LIMIT
        assert big.statuses[0].current_limit is not None
        assert big.statuses[0].current_limit.requests_per_unit == limit
        assert big.statuses[0].current_limit.name == "tenant-metered"
        reset = big.statuses[0].duration_until_reset
        assert reset is not None and 0 <= reset.total_seconds() <= 60
        assert any(h.key == "grpc-status-details-bin" for h in big.response_headers_to_add)
        retry = [int(h.value) for h in big.response_headers_to_add if h.key == "retry-after"]
        assert len(retry) == 1 and 1 <= retry[0] <= 60
        message = f"tenant metered: quota of {limit} requests per minute exceeded"
        assert big.raw_body == message.encode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def chain(
    demo_build: Path, pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FullStack]:
    """Triton -> edge -> the real router (mTLS, INFERLINE_AUTH__MODE=edge)."""
    full = FullStack(
        demo_build,
        tmp_path_factory.mktemp("chain-logs"),
        pki,
        router_env={"INFERLINE_FEATURES__TIMEOUT_MS": "1000"},
    )
    try:
        # From a worker thread: no preexec_fn, so no fork after this process used gRPC.
        await asyncio.to_thread(full.start)
        yield full
    finally:
        await asyncio.to_thread(full.stop)


@pytest.mark.slow
async def test_full_chain_through_router(chain: FullStack) -> None:
    assert chain.edge is not None and chain.router is not None and chain.base is not None
    assert chain.base.triton is not None
    pki = chain.pki
    for tenant, svc in (("demo", "cli"), ("payments", "checkout")):
        if not pki.client(tenant, svc).cert.exists():
            pki.issue_client(tenant, svc, days=1)

    def channel(address: str, who: tuple[str, str], name: str) -> grpc.aio.Channel:
        pair = pki.client(*who)
        creds = grpc.ssl_channel_credentials(
            pki.ca.cert.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes()
        )
        return grpc.aio.secure_channel(address, creds, [("grpc.ssl_target_name_override", name)])

    async with channel(chain.edge.mtls_address, ("demo", "cli"), EDGE_DNS) as ch:
        ok = await inference_pb2_grpc.InferenceServiceStub(ch).Predict(
            fraud_request([1, 2]), timeout=10
        )
    assert len(ok.scores) == 2
    async with channel(chain.edge.mtls_address, ("payments", "checkout"), EDGE_DNS) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as denied:  # router authZ, behind the edge
            await inference_pb2_grpc.InferenceServiceStub(ch).Predict(
                ranker_request(1, [1, 2]), timeout=10
            )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    forged = (("x-forwarded-client-cert", "URI=spiffe://inferline/tenant/demo/svc/cli"),)
    async with channel(chain.router.address, ("payments", "checkout"), ROUTER_DNS) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as direct:  # straight to the router
            await inference_pb2_grpc.InferenceServiceStub(ch).Predict(
                fraud_request([1]), metadata=forged, timeout=10
            )
    assert direct.value.code() == grpc.StatusCode.UNAUTHENTICATED

    edge_address, triton_address = chain.edge.mtls_address, chain.base.triton.grpc_url

    def kserve() -> tuple[Any, Any]:
        """tritonclient with a tenant certificate, through the edge vs Triton directly."""
        pair = pki.client("demo", "cli")
        via = tgrpc.InferenceServerClient(
            edge_address,
            ssl=True,
            root_certificates=str(pki.ca.cert),
            private_key=str(pair.key),
            certificate_chain=str(pair.cert),
            channel_args=[("grpc.ssl_target_name_override", EDGE_DNS)],
        )
        direct = tgrpc.InferenceServerClient(triton_address)
        x = np.linspace(0, 1, 2 * 33, dtype=np.float32).reshape(2, 33)
        outs = []
        for c in (via, direct):
            inp = tgrpc.InferInput("input__0", [2, 33], "FP32")
            inp.set_data_from_numpy(x)
            outs.append(
                c.infer("fraud", [inp], model_version="1", client_timeout=10).as_numpy("output__0")
            )
        return outs[0], outs[1]

    via_edge, direct_triton = await asyncio.to_thread(kserve)
    assert via_edge is not None and np.array_equal(via_edge, direct_triton)
