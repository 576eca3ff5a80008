"""Wiring of the release registry into one router process (used by ``router.app``).

Builds the registry's adapters (SQLite store, Triton repository API, Feast
views), the service, the canary controller, the shadow mirror, per-arm stats
and metrics, and the admin gRPC handler; owns their start/stop. The router's
snapshot is rebuilt from registry state through ``refresh`` (the App's), on
every local change at once and on other processes' changes within
``poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace

import grpc
import structlog
from pydantic import ValidationError

from router.backends.feast_store import FeastFeatureStore
from router.backends.registry_sqlite import SqliteRegistryStore
from router.backends.triton_repository import TritonRepository, read_serving_config
from router.errors import ConfigError
from router.observability.metrics import Metrics
from router.observability.release import ReleaseMetrics
from router.pipeline.arms import ArmStats
from router.pipeline.inference import ModelServer
from router.pipeline.routing import RoutingTable
from router.pipeline.shadow import ShadowMirror
from router.pipeline.snapshot import Snapshot
from router.registry.audit import AuditSink
from router.registry.canary import CanaryController, CanaryPolicy
from router.registry.overlay import overlay
from router.registry.service import RegistryService
from router.settings import Settings
from router.transport.admin import admin_handler

log = structlog.get_logger("router.release")


class Release:
    def __init__(
        self,
        settings: Settings,
        *,
        features: FeastFeatureStore,
        metrics: Metrics,
        servers: Callable[[str], ModelServer],
        snapshot: Callable[[], Snapshot],
        refresh: Callable[[], Awaitable[None]],
        audit: AuditSink | None = None,
    ) -> None:
        r = settings.registry
        self._settings = settings
        self._refresh = refresh
        self.store = SqliteRegistryStore(r.db_path)
        self.repository = TritonRepository(settings.triton.url, settings.models.repository)
        self.metrics = ReleaseMetrics(metrics.registry)
        self.arms = ArmStats(r.arm_window, r.outcome_join_entries, self.metrics.on_arm)
        self.shadow = ShadowMirror(
            servers=servers,
            max_in_flight=r.shadow_max_in_flight,
            timeout_s=r.shadow_timeout_ms / 1000,
            on_result=self.metrics.on_shadow,
        )
        self.service = RegistryService(
            store=self.store,
            repository=settings.models.repository,
            control=self.repository,
            views=features,
            read_config=read_serving_config,
            audit=audit,
            on_change=self._changed,
            warmup_rows=r.warmup_rows,
        )
        self.controller = CanaryController(
            service=self.service,
            arms=self.arms,
            policy=CanaryPolicy.model_validate(r.canary_policy),
            interval_s=r.canary_interval_s,
        )
        self.handler: grpc.GenericRpcHandler = admin_handler(
            self.service, self.arms, self.controller, snapshot=snapshot, auth=settings.auth
        )
        self.seen_revision = -1
        self._tasks: list[asyncio.Task[None]] = []

    def apply(self, table: RoutingTable, load: Callable[[RoutingTable], Snapshot]) -> Snapshot:
        """The snapshot for ``table`` overlaid with registry state (one read)."""
        state = self.store.state()
        try:
            overlaid = overlay(table, state)
        except ValidationError as e:
            # The registry's state does not fit the file's table (a version the
            # file no longer lists, say): refuse this snapshot, keep serving.
            raise ConfigError(f"registry state does not apply to the routing table: {e}") from e
        snap = load(overlaid)
        self.seen_revision = state.revision
        return replace(snap, experiments=dict(state.experiments), shadows=dict(state.shadows))

    async def start(self, models: list[str]) -> None:
        await self.repository.start()
        if self._settings.registry.manage_triton:
            for model in models:
                await self.service.ensure_loaded(model)
        self._tasks.append(asyncio.create_task(self._poll()))
        if self._settings.registry.canary_controller:
            self._tasks.append(asyncio.create_task(self.controller.run()))

    async def _changed(self) -> None:
        await self._refresh()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._settings.registry.poll_interval_s)
            try:
                if self.store.revision() != self.seen_revision:
                    await self._refresh()
            except Exception:
                # One bad round (the database locked past its timeout, say) must
                # not stop this router from following the registry for good.
                log.exception("registry.poll_failed")

    def sync_metrics(self) -> None:
        self.metrics.sync(self.arms)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.shadow.drain()
        await self.repository.close()
        self.store.close()
