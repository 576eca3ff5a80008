"""Cluster-wide per-tenant quotas: Envoy's global rate-limit API backed by Redis.

Envoy's local token buckets are per Envoy process; a tenant's quota per minute
must hold across every Envoy replica, so it is counted in Redis. Envoy calls
``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`` with the
descriptor ``{tenant: <id>}`` (set from the verified identity) for each request.

Counting: a sliding-window counter (current minute + the previous minute weighted
by how much of it still overlaps the window), in one Lua script so check and
increment are atomic across replicas, with Redis's clock (TIME) as the one clock.
Refused requests are not counted, so a tenant that keeps hammering gets its quota
back as the window slides instead of being locked out forever.

Failure: if Redis does not answer within ``--redis-timeout-ms`` the call fails
with UNAVAILABLE and Envoy applies its failure mode (fail open by default; see
docs/edge.md). The quota numbers come from ``envoy/tenants.yaml`` (polled).

CLI: ``python -m inferline_edge.ratelimit --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import math
import os
import signal
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import redis.asyncio as aioredis
import uvloop
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.exceptions import RedisError

import inferline_edge.tenants as tenants
from inferline_edge import rls_wire

log = logging.getLogger("inferline_edge.ratelimit")
SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
WINDOW_S = 60

# KEYS: current window, previous window. ARGV: limit, hits, window seconds.
# Returns {admitted 0|1, previous count, current count, ms elapsed in window}.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window_ms = tonumber(ARGV[3]) * 1000
local idx = math.floor(now_ms / window_ms)
local elapsed = now_ms - idx * window_ms
local cur_key = KEYS[1] .. ':' .. idx
local prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. (idx - 1)) or '0')
local cur = tonumber(redis.call('GET', cur_key) or '0')
local hits = tonumber(ARGV[2])
local weight = (window_ms - elapsed) / window_ms
if prev * weight + cur + hits > tonumber(ARGV[1]) then
  return {0, prev, cur, elapsed}
end
cur = redis.call('INCRBY', cur_key, hits)
if cur == hits then redis.call('PEXPIRE', cur_key, 2 * window_ms + 1000) end
return {1, prev, cur, elapsed}
"""


class WindowState(NamedTuple):
    admitted: bool
    prev: int
    cur: int
    elapsed_ms: int

    def estimate(self) -> float:
        return self.prev * (WINDOW_S * 1000 - self.elapsed_ms) / (WINDOW_S * 1000) + self.cur

    def retry_after_s(self, limit: int) -> float:
        """Seconds until one more request fits (the sliding estimate drops to limit - 1)."""
        w = WINDOW_S
        e = self.elapsed_ms / 1000
        room = limit - 1 - self.cur
        if room >= 0 and self.prev > 0:  # fits later in this window, as prev slides out
            return max(0.0, w * (1 - room / self.prev) - e)
        # only in the next window, where this window's count becomes `prev`
        return (w - e) + (w * (1 - (limit - 1) / self.cur) if self.cur > 0 else 0.0)


def quota_failure_details(tenant: str, limit: int, retry_after_s: float, message: str) -> str:
    """base64 ``google.rpc.Status`` (RESOURCE_EXHAUSTED + QuotaFailure + RetryInfo) for
    the ``grpc-status-details-bin`` trailer of Envoy's trailers-only reply."""
    violation = error_details_pb2.QuotaFailure.Violation(
        subject=f"tenant:{tenant}",
        description=f"quota of {limit} requests per minute exceeded",
    )
    details = [
        error_details_pb2.QuotaFailure(violations=[violation]),
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=int(retry_after_s), nanos=int((retry_after_s % 1) * 1e9)
            )
        ),
    ]
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    st = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=packed)
    return base64.b64encode(st.SerializeToString()).decode()


class QuotaService:
    """ShouldRateLimit over Redis; quotas from the tenant file."""

    def __init__(self, redis: aioredis.Redis, config: tenants.EdgeConfig, *, domain: str) -> None:
        self.redis = redis
        self.config = config
        self.domain = domain
        self._script = redis.register_script(_SLIDING_WINDOW)

    def quota_of(self, tenant: str) -> int:
        t = self.config.tenants.get(tenant)
        return t.quota_per_minute if t is not None else 0

    async def check(self, tenant: str, hits: int) -> tuple[WindowState, int]:
        limit = self.quota_of(tenant)
        key = f"inferline:quota:{{{tenant}}}"  # hash tag: both windows in one cluster slot
        raw = await self._script(keys=[key], args=[limit, hits, WINDOW_S])
        return WindowState(bool(raw[0]), int(raw[1]), int(raw[2]), int(raw[3])), limit

    async def should_rate_limit(self, req: Any, context: grpc.aio.ServicerContext) -> Any:
        """``req``/the answer: rls_wire.RateLimitRequest / RateLimitResponse."""
        hits = req.hits_addend or 1
        resp = rls_wire.RateLimitResponse()
        over: tuple[str, int, WindowState] | None = None
        for desc in req.descriptors:
            status = resp.statuses.add()
            tenant = {e.key: e.value for e in desc.entries}.get("tenant")
            if req.domain != self.domain or tenant is None or self.quota_of(tenant) <= 0:
                status.code = rls_wire.CODE_OK
                continue
            try:
                state, limit = await self.check(tenant, hits)
            except (RedisError, OSError, TimeoutError) as e:
                # Envoy applies failure_mode_deny to this error (fail open by default).
                log.warning("redis unavailable: %s", e)
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"quota store unavailable: {e}")
            status.code = rls_wire.CODE_OK if state.admitted else rls_wire.CODE_OVER_LIMIT
            status.current_limit.name = f"tenant-{tenant}"
            status.current_limit.requests_per_unit = limit
            status.current_limit.unit = rls_wire.UNIT_MINUTE
            status.limit_remaining = max(0, limit - math.ceil(state.estimate()))
            reset_ms = max(0, WINDOW_S * 1000 - state.elapsed_ms)
            status.duration_until_reset.seconds = reset_ms // 1000
            status.duration_until_reset.nanos = reset_ms % 1000 * 1_000_000
            if not state.admitted and over is None:
                over = (tenant, limit, state)
        if over is None:
            resp.overall_code = rls_wire.CODE_OK
            return resp
        tenant, limit, state = over
        retry = max(1, math.ceil(state.retry_after_s(limit)))
        message = f"tenant {tenant}: quota of {limit} requests per minute exceeded"
        resp.overall_code = rls_wire.CODE_OVER_LIMIT
        resp.response_headers_to_add.add(key="retry-after", value=str(retry))
        resp.response_headers_to_add.add(
            key="grpc-status-details-bin",
            value=quota_failure_details(tenant, limit, retry, message),
        )
        resp.raw_body = message.encode()
        return resp

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(
            self.should_rate_limit,
            request_deserializer=rls_wire.RateLimitRequest.FromString,
            response_serializer=rls_wire.RateLimitResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"ShouldRateLimit": method})


async def serve(args: argparse.Namespace) -> None:
    timeout = args.redis_timeout_ms / 1000
    host, port = args.redis.rsplit(":", 1)
    # The password comes from the environment, never the command line (which
    # every process on the node can read in /proc).
    password = os.environ.get(args.redis_password_env) if args.redis_password_env else None
    if args.redis_password_env and not password:
        raise SystemExit(f"--redis-password-env: ${args.redis_password_env} is not set")
    redis = aioredis.Redis(
        host=host,
        port=int(port),
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=64,
    )
    svc = QuotaService(redis, tenants.load(args.tenants), domain=args.domain)

    def reload() -> None:
        svc.config = tenants.load(args.tenants)
        log.info(
            "quotas reloaded: %s", {k: t.quota_per_minute for k, t in svc.config.tenants.items()}
        )

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((svc.handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    watcher = asyncio.create_task(tenants.watch([Path(args.tenants)], reload))
    log.info("rate-limit service on %s:%d, redis %s", args.host, args.port, args.redis)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    watcher.cancel()
    await server.stop(1.0)
    await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m inferline_edge.ratelimit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tenants", type=Path, required=True, help="tenants.yaml")
    p.add_argument("--port", type=int, required=True, help="gRPC port")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a pod)")
    p.add_argument("--redis", required=True, help="host:port")
    p.add_argument("--redis-timeout-ms", type=float, default=20.0)
    p.add_argument(
        "--redis-password-env",
        default="",
        help="name of the environment variable holding the Redis password (AUTH)",
    )
    p.add_argument("--domain", default="inferline")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
