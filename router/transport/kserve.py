"""gRPC handler for ``inference.GRPCInferenceService`` (KServe v2) on the router.

Registered as a generic handler with raw-bytes (de)serializers: the router never
decodes tensors, the pipeline only reads the model name and version.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc

from router.backends.kserve import MODEL_METHODS, SERVER_METHODS, SERVICE
from router.logging import bind_request
from router.pipeline.passthrough import Passthrough
from router.settings import AuthSettings
from router.transport.identity import caller_tenant, peer_uris


def _identity(raw: bytes) -> bytes:
    return raw


def kserve_handler(
    passthrough: Passthrough, *, auth: AuthSettings, default_deadline_s: float
) -> grpc.GenericRpcHandler:
    def model_method(method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = {
                k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)
            }
            tenant = caller_tenant(auth, metadata, lambda: peer_uris(context))
            bind_request(tenant=tenant, api="kserve")
            remaining = context.time_remaining()
            deadline = time.monotonic() + (
                remaining if remaining is not None else default_deadline_s
            )
            return await passthrough.model_call(
                method, raw, tenant, metadata.get(auth.priority_header), deadline
            )

        return handle

    def server_method(method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await passthrough.server_call(method)

        return handle

    handlers = {
        m: grpc.unary_unary_rpc_method_handler(
            model_method(m), request_deserializer=_identity, response_serializer=_identity
        )
        for m in MODEL_METHODS
    }
    handlers |= {
        m: grpc.unary_unary_rpc_method_handler(
            server_method(m), request_deserializer=_identity, response_serializer=_identity
        )
        for m in SERVER_METHODS
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
