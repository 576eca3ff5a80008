"""The error interceptor on a real grpc.aio server: every failure is a clean status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from inferline.v1 import inference_pb2, inference_pb2_grpc
from router.errors import NotFound, ResourceExhausted
from router.observability.metrics import Metrics
from router.transport.interceptors import ErrorInterceptor

METHOD = "/inferline.v1.InferenceService/Predict"


class _Servicer(inference_pb2_grpc.InferenceServiceServicer):
    async def Predict(self, request, context):  # type: ignore[no-untyped-def]
        match request.request_id:
            case "not-found":
                raise NotFound("unknown model 'x'")
            case "quota":
                raise ResourceExhausted("over quota", retry_after_s=2.0, quota_subject="tenant:a")
            case "bug":
                raise KeyError("secret internal detail /etc/passwd")
            case "slow":
                await asyncio.sleep(5)
        return inference_pb2.PredictResponse(request_id=request.request_id)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


async def _call(ch: grpc.aio.Channel, request_id: str) -> inference_pb2.PredictResponse:
    stub = inference_pb2_grpc.InferenceServiceStub(ch)
    return await stub.Predict(inference_pb2.PredictRequest(request_id=request_id), timeout=5)


async def test_ok_passes_through(channel: grpc.aio.Channel) -> None:
    assert (await _call(channel, "fine")).request_id == "fine"


@pytest.mark.parametrize(
    ("rid", "code", "message"),
    [
        ("not-found", grpc.StatusCode.NOT_FOUND, "unknown model 'x'"),
        ("quota", grpc.StatusCode.RESOURCE_EXHAUSTED, "over quota"),
        ("bug", grpc.StatusCode.INTERNAL, "internal error"),
    ],
)
async def test_errors_map_to_status(
    channel: grpc.aio.Channel, rid: str, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _call(channel, rid)
    assert exc.value.code() == code
    assert exc.value.details() == message
    assert "Traceback" not in (exc.value.details() or "")
    assert "passwd" not in (exc.value.debug_error_string() or "")


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x08" + b"\xff" * 11])
async def test_garbage_body_is_invalid_argument_and_server_survives(
    channel: grpc.aio.Channel, body: bytes
) -> None:
    raw = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await raw(body, timeout=5)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await _call(channel, "after")).request_id == "after"


async def test_resource_exhausted_carries_retry_info_and_quota_failure(
    channel: grpc.aio.Channel,
) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _call(channel, "quota")
    err = exc.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(err)
    assert status is not None
    kinds = {}
    for d in status.details:
        for cls in (error_details_pb2.RetryInfo, error_details_pb2.QuotaFailure):
            if d.Is(cls.DESCRIPTOR):
                msg = cls()
                d.Unpack(msg)
                kinds[cls.__name__] = msg
    assert kinds["RetryInfo"].retry_delay.seconds == 2
    assert kinds["QuotaFailure"].violations[0].subject == "tenant:a"
    assert dict(err.trailing_metadata())["retry-after"] == "2"


async def test_a_call_cut_off_by_its_deadline_or_its_caller_is_not_counted_ok() -> None:
    metrics = Metrics(lambda: (frozenset(), frozenset()))
    server = grpc.aio.server(interceptors=[ErrorInterceptor(metrics)])
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    def counted(code: str) -> float:
        metrics.fold()
        return sum(
            s.value
            for family in metrics.registry.collect()
            for s in family.samples
            if s.name == "inferline_requests_total" and s.labels["code"] == code
        )

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            slow = inference_pb2.PredictRequest(request_id="slow")
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.Predict(slow, timeout=0.2)
            assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            call = stub.Predict(slow, timeout=30)
            await asyncio.sleep(0.2)
            call.cancel()
            for _ in range(100):
                if counted("CANCELLED"):
                    break
                await asyncio.sleep(0.02)
    finally:
        await server.stop(0)
    assert (counted("DEADLINE_EXCEEDED"), counted("CANCELLED"), counted("OK")) == (1, 1, 0)
