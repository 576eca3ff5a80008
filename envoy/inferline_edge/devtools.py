"""Development helpers for the edge: a stand-in upstream and a tenant client.

``EchoUpstream`` plays the router's part of the contract (mTLS server requiring
Envoy's client certificate) and answers each call with the headers and peer
identity that reached it, so the edge can be developed and tested without the
router. ``EdgeClient`` is what a tenant does: a gRPC channel with its certificate.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import grpc

from inferline_edge.certs import EDGE_DNS, DevPKI

PREDICT = "/inferline.v1.InferenceService/Predict"
SLEEP_HEADER = "x-test-sleep-ms"
"""The echo server waits this many ms before answering (an in-flight request)."""


@dataclass
class Seen:
    method: str
    metadata: dict[str, str]
    peer_uris: list[str]


@dataclass
class EchoUpstream:
    """Stands in for the router: mTLS server that records each request's headers."""

    pki: DevPKI
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    server: grpc.aio.Server | None = None

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        auth = context.auth_context()
        uris = [u.decode() for u in auth.get("peer_spiffe_id", [])]
        self.seen.append(Seen(PREDICT, md, uris))
        if SLEEP_HEADER in md:
            await asyncio.sleep(float(md[SLEEP_HEADER]) / 1000)
        return json.dumps({"metadata": md, "peer": uris}).encode()

    async def start(self) -> str:
        handler = grpc.unary_unary_rpc_method_handler(self.handle)
        generic = grpc.method_handlers_generic_handler(
            "inferline.v1.InferenceService", {"Predict": handler}
        )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((generic,))
        key, cert = self.pki.router.key.read_bytes(), self.pki.router.cert.read_bytes()
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=self.pki.ca.cert.read_bytes(), require_client_auth=True
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        await self.server.start()
        return f"127.0.0.1:{self.port}"


@dataclass
class Result:
    code: grpc.StatusCode
    details: str | None
    trailers: dict[str, Any]
    body: dict[str, Any] | None
    error: grpc.aio.AioRpcError | None = None


class EdgeClient:
    """A tenant's gRPC channel to the edge (client cert, or none for the JWT port)."""

    def __init__(
        self,
        pki: DevPKI,
        address: str,
        cert: tuple[str, str] | None = None,
        *,
        other_ca: bool = False,
    ) -> None:
        key = chain = None
        if cert is not None:
            pair = pki.client(*cert, other_ca=other_ca)
            key, chain = pair.key.read_bytes(), pair.cert.read_bytes()
        creds = grpc.ssl_channel_credentials(pki.ca.cert.read_bytes(), key, chain)
        self.channel = grpc.aio.secure_channel(
            address, creds, options=[("grpc.ssl_target_name_override", EDGE_DNS)]
        )
        self.predict = self.channel.unary_unary(PREDICT)

    async def call(
        self, metadata: tuple[tuple[str, str], ...] = (), deadline_s: float = 5.0
    ) -> Result:
        call = self.predict(b"{}", metadata=metadata, timeout=deadline_s)
        try:
            body = await call
        except grpc.aio.AioRpcError as e:
            trailers = dict(e.trailing_metadata() or ())
            return Result(e.code(), e.details(), trailers, None, e)
        return Result(
            grpc.StatusCode.OK, None, dict(await call.trailing_metadata() or ()), json.loads(body)
        )

    async def close(self) -> None:
        await self.channel.close()
