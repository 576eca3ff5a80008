"""The rate-limit service against a Redis that requires AUTH (as the chart's
side-by-side Redis and production ones do): with the password, quotas are
counted and enforced; without it every call fails open, which is what the
chart used to deploy silently."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from scripts.edge_procs import RateLimitProcess
from scripts.stack import RedisServer

QUOTA = 3
PASSWORD = "s3cret-test-only"
TENANTS = {
    "version": "auth-test",
    "ratelimit_service": {"timeout_ms": 50, "failure_mode_deny": False},
    "tenants": {
        "metered": {
            "identities": ["spiffe://inferline/tenant/metered/svc/*"],
            "rate_limit": {"requests_per_second": 1000, "burst": 1000},
            "quota_per_minute": QUOTA,
        },
    },
}


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD) as server:
        yield server


def _tenants(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(TENANTS))
    return path


async def _codes(address: str, n: int) -> list[object]:
    """Each call's overall code, or the gRPC status it failed with."""
    from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import (
        RateLimitDescriptor,
        RateLimitDescriptorEntry,
    )
    from envoy_data_plane.envoy.service.ratelimit.v3 import RateLimitRequest, RateLimitResponse

    entry = RateLimitDescriptorEntry(key="tenant", value="metered")
    req = RateLimitRequest(
        domain="inferline", hits_addend=1, descriptors=[RateLimitDescriptor(entries=[entry])]
    )
    async with grpc.aio.insecure_channel(address) as ch:
        rpc = ch.unary_unary(
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            request_serializer=bytes,
            response_deserializer=RateLimitResponse.parse,
        )
        codes: list[object] = []
        for _ in range(n):
            try:
                codes.append((await rpc(req, timeout=5)).overall_code)
            except grpc.aio.AioRpcError as e:
                codes.append(e.code())
        return codes


async def test_quota_is_enforced_against_a_redis_that_requires_auth(
    redis: RedisServer, tmp_path: Path
) -> None:
    from envoy_data_plane.envoy.service.ratelimit.v3 import RateLimitResponseCode as Code

    tenants = _tenants(tmp_path)
    with RateLimitProcess(tenants, redis.url, tmp_path / "rls", redis_password=PASSWORD) as rls:
        codes = await _codes(rls.address, QUOTA + 2)
    assert codes == [Code.OK] * QUOTA + [Code.OVER_LIMIT] * 2


async def test_without_the_password_every_call_is_unavailable(
    redis: RedisServer, tmp_path: Path
) -> None:
    """What the chart deployed before: the service cannot reach its counters,
    answers UNAVAILABLE, and Envoy (failure_mode_deny off) lets everything by."""
    tenants = _tenants(tmp_path)
    with RateLimitProcess(tenants, redis.url, tmp_path / "rls") as rls:
        codes = await _codes(rls.address, QUOTA + 2)
    assert codes == [grpc.StatusCode.UNAVAILABLE] * (QUOTA + 2)
