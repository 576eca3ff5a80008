"""Draining on SIGTERM (``GrpcServer.stop``): health turns NOT_SERVING on both
ports for good, while the router keeps answering for ``server.drain_s``.

The regression: the canary prober calls ``set_serving`` every round, and during
the drain it turned the fast lane's ``/healthz`` (what Envoy checks on the
``router_fast`` cluster) back to 200. Envoy then kept sending Predict to the
draining router until it stopped and closed its kept-alive connections, and a
request sent on one as it closed was lost (flags=UC in Envoy's access log, the
rolling-restart drill's UNAVAILABLE). The gRPC health service was never
affected: it ignores ``set`` after ``enter_graceful_shutdown``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferline.v1 import inference_pb2
from router.settings import ServerSettings, TlsSettings
from router.transport.fastlane import PREDICT_PATH, FastLane
from router.transport.server import SERVICE_NAME, GrpcServer

HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: router\r\n\r\n"


class _Servicer:
    async def handle(
        self,
        request: inference_pb2.PredictRequest,
        metadata: Mapping[str, str],
        peers: Callable[[], frozenset[str]],
        time_remaining: float | None,
    ) -> inference_pb2.PredictResponse:
        return inference_pb2.PredictResponse(request_id=request.request_id)

    async def Predict(
        self, request: inference_pb2.PredictRequest, context: Any
    ) -> inference_pb2.PredictResponse:
        return inference_pb2.PredictResponse(request_id=request.request_id)


def _predict(request_id: str) -> bytes:
    body = inference_pb2.PredictRequest(request_id=request_id).SerializeToString()
    head = (
        b"POST %s HTTP/1.1\r\nhost: router\r\ncontent-type: application/x-protobuf\r\n"
        b"content-length: %d\r\n\r\n" % (PREDICT_PATH, len(body))
    )
    return head + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
    }
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, body


async def _healthz(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(HEALTHZ)
        return (await _answer(reader))[0]
    finally:
        writer.close()


async def _grpc_health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        return int(resp.status)


async def test_a_canary_round_during_the_drain_does_not_bring_health_back() -> None:
    settings = ServerSettings(port=0, bridge_port=0, drain_s=0.6, grace_period_s=0.5)
    server = GrpcServer(settings, TlsSettings(), _Servicer())  # type: ignore[arg-type]
    port = await server.start()
    assert server.bridge_port is not None
    await server.set_serving(True)
    assert await _healthz(server.bridge_port) == 200
    assert await _grpc_health(port) == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(server.stop())  # SIGTERM
    try:
        await asyncio.sleep(0.1)
        await server.set_serving(True)  # what the prober's next round does
        assert await _healthz(server.bridge_port) == 503
        assert await _grpc_health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await stopping


async def test_draining_lane_answers_with_connection_close() -> None:
    """While draining, a request that still arrives on a kept-alive connection is
    answered, with ``connection: close``, and the connection is closed after it:
    the peer will not reuse a connection this router is about to close. New
    connections are still accepted and answered until ``stop``."""
    settings = ServerSettings(port=0, bridge_port=0)
    lane = FastLane(settings, TlsSettings(), _Servicer(), None, None)  # type: ignore[arg-type]
    port = await lane.start(0)
    lane.serving = True
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_predict("before"))
        status, headers, _ = await _answer(reader)
        assert status == 200 and "connection" not in headers  # kept alive
        lane.drain()
        lane.serving = True  # ignored from now on
        writer.write(_predict("during"))
        status, headers, body = await _answer(reader)
        assert status == 200 and headers.get("connection") == "close"
        assert inference_pb2.PredictResponse.FromString(body).request_id == "during"
        assert await asyncio.wait_for(reader.read(), 1.0) == b""
        writer.close()
        assert await _healthz(port) == 503  # a new connection: accepted, not in rotation
    finally:
        await lane.stop(0.5)
