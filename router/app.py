"""Composition root: builds every component once and owns start/stop order.

Start: logging -> routing snapshot (table + version metadata) -> feature store
-> Triton (ready) -> gRPC server -> health SERVING -> table reloader.
Stop, in reverse: health NOT_SERVING -> drain gRPC -> reloader -> Triton
client -> feature store.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from router.backends.feast_store import FeastFeatureStore
from router.backends.triton import TritonPools
from router.errors import ConfigError, Unavailable
from router.logging import configure_logging
from router.pipeline.admission import Admission
from router.pipeline.passthrough import Passthrough
from router.pipeline.predict import Predictor
from router.pipeline.routing import RoutingTable
from router.pipeline.snapshot import Snapshot, SnapshotHolder
from router.settings import Settings
from router.transport.kserve import kserve_handler
from router.transport.server import GrpcServer
from router.transport.servicer import InferenceServicer

log = structlog.get_logger("router.app")


def _pools(table: RoutingTable) -> dict[str, tuple[str, str | None]]:
    return {name: (p.grpc, p.http) for name, p in table.pools.items()}


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.features = FeastFeatureStore(
            settings.features.repo_path, inline_sync_reads=settings.features.inline_sync_reads
        )
        self.triton = TritonPools(
            settings.triton.url, settings.triton.http_url, settings.triton.startup_timeout_s
        )
        self.admission = Admission(settings.limits.max_in_flight)
        self.snapshots: SnapshotHolder | None = None
        self.server: GrpcServer | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._table_mtime = 0.0

    def _load_snapshot(self) -> Snapshot:
        path = self.settings.routing.table_path
        table = RoutingTable.from_yaml(path)
        snap = Snapshot.load(table, self.settings.models.repository)
        for version in snap.catalog:
            for plan in version.views:
                self.features.check_features(plan.view, plan.features)
        self._table_mtime = path.stat().st_mtime
        return snap

    async def start(self) -> int:
        s = self.settings
        configure_logging(s.log)
        self.features.start()
        self.snapshots = SnapshotHolder(self._load_snapshot())
        await self.triton.start()
        await self.triton.sync(_pools(self.snapshots.current.table))
        predictor = Predictor(
            snapshot=self.snapshots.get,
            features=self.features,
            servers=self.triton.get,
            admission=self.admission,
            max_candidates=s.limits.max_candidates,
            feature_timeout_s=s.features.timeout_ms / 1000,
            min_inference_budget_s=s.limits.min_inference_budget_ms / 1000,
            max_clock_skew_s=s.features.max_clock_skew_s,
        )
        servicer = InferenceServicer(
            predictor,
            auth=s.auth,
            default_deadline_s=s.limits.default_deadline_ms / 1000,
        )
        passthrough = Passthrough(
            snapshot=self.snapshots.get, servers=self.triton.get, admission=self.admission
        )
        kserve = kserve_handler(
            passthrough, auth=s.auth, default_deadline_s=s.limits.default_deadline_ms / 1000
        )
        self.server = GrpcServer(s.server, s.tls, servicer, (kserve,))
        port = await self.server.start()
        await self.server.set_serving(True)
        if s.routing.reload_interval_s > 0:
            self._reloader = asyncio.create_task(self._reload_loop())
        log.info("router.started", port=port, routing_version=self.snapshots.current.table.version)
        return port

    async def _reload_loop(self) -> None:
        """Swap in a changed routing table; an invalid one keeps the old snapshot."""
        path = self.settings.routing.table_path
        while True:
            await asyncio.sleep(self.settings.routing.reload_interval_s)
            try:
                if path.stat().st_mtime == self._table_mtime:
                    continue
                snap = self._load_snapshot()
                await self.triton.sync(_pools(snap.table))
            except (OSError, ConfigError, Unavailable) as e:
                log.error("routing.reload_rejected", error=str(e))
                continue
            assert self.snapshots is not None
            old = self.snapshots.swap(snap)
            log.info("routing.reloaded", old=old.table.version, new=snap.table.version)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        await self.triton.close()
        await self.features.close()
        log.info("router.stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then drain and stop."""
    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        await stop.wait()
    finally:
        await app.stop()
