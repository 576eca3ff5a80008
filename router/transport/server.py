"""Build the grpc.aio server (Predict, health, reflection, one interceptor) and,
when configured, the HTTP/1.1 fast lane for Predict beside it.

Health is set here for both ports: the gRPC health service and the fast lane's
``GET /healthz``, which Envoy checks on its two router clusters. Once ``stop``
has begun both stay NOT_SERVING, whatever the canary prober reports meanwhile.
"""

from __future__ import annotations

import asyncio

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from inferline.v1 import admin_pb2, inference_pb2, inference_pb2_grpc
from router.backends.kserve import SERVICE as KSERVE_SERVICE
from router.observability.metrics import Metrics
from router.settings import ServerSettings, TlsSettings
from router.transport.fastlane import FastLane
from router.transport.interceptors import ErrorInterceptor
from router.transport.servicer import InferenceServicer
from router.transport.tls_reload import CertReloader

SERVICE_NAME: str = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
ADMIN_SERVICE: str = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name

log = structlog.get_logger("router.server")


class GrpcServer:
    def __init__(
        self,
        settings: ServerSettings,
        tls: TlsSettings,
        servicer: InferenceServicer,
        extra_handlers: tuple[grpc.GenericRpcHandler, ...] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._tls = tls
        self.health = HealthServicer()
        self._server = grpc.aio.server(
            interceptors=[ErrorInterceptor(metrics)],
            options=[
                ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                ("grpc.so_reuseport", 1),
            ],
        )
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._server.add_generic_rpc_handlers(extra_handlers)
        if settings.reflection:
            reflection.enable_server_reflection(
                (
                    SERVICE_NAME,
                    ADMIN_SERVICE,
                    KSERVE_SERVICE,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                self._server,
            )
        self.port = 0
        self.bridge_port: int | None = None
        self.tls_reloader: CertReloader | None = None
        self._servicer = servicer
        self._metrics = metrics
        self.fastlane: FastLane | None = None

    def _credentials(self) -> grpc.ServerCredentials | None:
        tls = self._tls
        if tls.cert_file is None and tls.key_file is None:
            return None
        self.tls_reloader = CertReloader(tls)  # follows the files: rotation without restart
        return self.tls_reloader.credentials()

    async def start(self) -> int:
        address = f"{self._settings.host}:{self._settings.port}"
        creds = self._credentials()
        if creds is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, creds)
        await self._server.start()
        if self._settings.bridge_port is not None:
            self.fastlane = FastLane(
                self._settings, self._tls, self._servicer, self._metrics, self.tls_reloader
            )
            self.bridge_port = await self.fastlane.start(self._settings.bridge_port)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Health on both ports (the canary prober calls it every round). After
        ``stop`` began it changes nothing: the gRPC health service ignores it
        after ``enter_graceful_shutdown`` and the fast lane after ``drain``."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        if self.fastlane is not None:
            self.fastlane.serving = serving

    async def stop(self) -> None:
        """Health NOT_SERVING on both ports for good, keep serving ``drain_s``
        while the load balancers' health checks take this router out, then stop
        accepting and let in-flight requests finish (``grace_period_s``)."""
        await self.health.enter_graceful_shutdown()
        if self.fastlane is not None:
            self.fastlane.drain()
        log.info("server.draining", drain_s=self._settings.drain_s)
        if self._settings.drain_s:
            await asyncio.sleep(self._settings.drain_s)
        grace = self._settings.grace_period_s
        if self.fastlane is None:
            await self._server.stop(grace)
            return
        await asyncio.gather(self.fastlane.stop(grace), self._server.stop(grace))

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
