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

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from router.errors import InferlineError

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


class ErrorInterceptor(grpc.aio.ServerInterceptor):
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
            structlog.contextvars.clear_contextvars()
            t0 = time.monotonic()
            status = grpc.StatusCode.OK
            try:
                if request is _UNDECODABLE:
                    status = grpc.StatusCode.INVALID_ARGUMENT
                    await context.abort(status, "request body is not a valid protobuf message")
                return await inner(request, context)
            except InferlineError as e:
                status = grpc.StatusCode[e.code.name]
                await context.abort(status, e.public_message)
            except grpc.aio.AbortError:
                raise
            except Exception:
                status = grpc.StatusCode.INTERNAL
                log.exception("rpc.unhandled_error", method=method)
                await context.abort(status, "internal error")
            finally:
                log.info(
                    "rpc.done",
                    method=method,
                    status=status.name,
                    duration_ms=round((time.monotonic() - t0) * 1000, 3),
                )

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=_safe(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
