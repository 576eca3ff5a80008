"""The one place errors become gRPC statuses.

``ErrorInterceptor`` wraps every unary-unary handler:
- an undecodable request body answers INVALID_ARGUMENT (gRPC's own default is
  INTERNAL "Exception deserializing request!", which would page someone for a
  client bug);
- an ``InferlineError`` answers its code and public message;
- anything else answers INTERNAL with a generic message, and the traceback is
  logged, never sent.
It also resets the per-request logging context and writes one log line per
request with its status and duration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from router.errors import InferlineError
from router.logging import clear_request, log_request_done, request_fields
from router.observability.metrics import Metrics
from router.transport.status import wire_status

log = structlog.get_logger("router.rpc")


class _Undecodable:
    """Marker returned by the safe deserializer instead of raising."""


_UNDECODABLE = _Undecodable()


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return deserialize


def _grpc_status(e: InferlineError) -> grpc.Status:
    """The error as a status with its trailers (rich details, retry-after)."""
    ws = wire_status(e)
    trailing: tuple[tuple[str, str | bytes], ...] = ()
    if ws.details is not None:
        trailing += (("grpc-status-details-bin", ws.details),)
    if ws.retry_after is not None:
        # Plain-HTTP clients and proxies read this header.
        trailing += (("retry-after", str(ws.retry_after)),)
    return _Status(grpc.StatusCode[ws.code], ws.message, trailing)


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[Any, ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing


def record_rpc(metrics: Metrics | None, method: str, code: str, duration_s: float) -> None:
    """The request's one log line and its metrics, whichever transport carried it."""
    ctx = request_fields()
    log_request_done(ctx, method=method, status=code, duration_ms=round(duration_s * 1000, 3))
    if metrics is not None:
        metrics.observe_rpc(method, code, duration_s, ctx)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            clear_request()
            t0 = time.monotonic()
            status = grpc.StatusCode.OK
            try:
                if request is _UNDECODABLE:
                    status = grpc.StatusCode.INVALID_ARGUMENT
                    await context.abort(status, "request body is not a valid protobuf message")
                return await inner(request, context)
            except InferlineError as e:
                status = grpc.StatusCode[e.code.name]
                await context.abort_with_status(_grpc_status(e))
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                # grpc.aio cancels the handler when the caller leaves or its
                # deadline passes: count it as that, not as OK.
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                status = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                raise
            except Exception:
                status = grpc.StatusCode.INTERNAL
                log.exception("rpc.unhandled_error", method=method)
                await context.abort(status, "internal error")
            finally:
                record_rpc(self._metrics, method, status.name, time.monotonic() - t0)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=_safe(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
