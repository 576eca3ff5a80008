"""Composition root: builds every component once and owns start/stop order.

Start: logging -> routing snapshot (table + version metadata) -> feature store
-> Triton (ready) -> compliance (audit writer, key reloader) -> gRPC server ->
health SERVING (after a warm canary round) -> table reloader. With the
registry on (``router.release``), its state overlays the table in every
snapshot, registered versions are loaded in Triton before serving, and the
AdminService is served next to Predict.
Stop, in reverse: health NOT_SERVING -> drain gRPC -> reloader -> compliance
(flush audit and captures) -> Triton client -> feature store. Health stays
NOT_SERVING through the drain although the canary prober still runs
(``GrpcServer.set_serving`` changes nothing once ``stop`` began).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
import uvloop

from router.audit.release_sink import AuditTrailSink
from router.backends.feast_store import FeastFeatureStore
from router.backends.redis_idempotency import RedisIdempotencyStore
from router.backends.triton import TritonPools
from router.compliance import Compliance
from router.errors import ConfigError, Unavailable
from router.logging import configure_logging
from router.observability.drift import DriftMonitor
from router.observability.metrics import Metrics
from router.observability.runtime import malloc_library
from router.observability.tracing import build_provider, request_spans, tracer
from router.pipeline.admission import Admission
from router.pipeline.breaker import BreakerRegistry, RetryBudget
from router.pipeline.cache import TtlCache
from router.pipeline.fallback import Ladder
from router.pipeline.features import Row
from router.pipeline.idempotency import Idempotency, MemoryIdempotencyStore
from router.pipeline.passthrough import Passthrough
from router.pipeline.predict import Predictor
from router.pipeline.probe import Prober
from router.pipeline.residency import Residency
from router.pipeline.routing import RoutingTable
from router.pipeline.snapshot import Snapshot, SnapshotHolder
from router.release import Release
from router.settings import Settings
from router.transport.kserve import kserve_handler
from router.transport.metrics_http import MetricsServer
from router.transport.server import GrpcServer
from router.transport.servicer import InferenceServicer

log = structlog.get_logger("router.app")


def _pools(table: RoutingTable) -> dict[str, tuple[str, str | None]]:
    return {name: (p.grpc, p.http) for name, p in table.pools.items()}


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.features = FeastFeatureStore(
            settings.features.repo_path,
            inline_sync_reads=settings.features.inline_sync_reads,
            direct_sqlite_reads=settings.features.direct_sqlite_reads,
            direct_redis_reads=settings.features.direct_redis_reads,
            busy_timeout_s=settings.features.timeout_ms / 1000,
        )
        self.triton = TritonPools(
            settings.triton.url,
            settings.triton.http_url,
            settings.triton.startup_timeout_s,
            http_max_age_s=settings.triton.http_connection_max_age_s,
        )
        self.admission = Admission(settings.limits.max_in_flight)
        r = settings.reliability
        self.breakers = BreakerRegistry(
            failure_threshold=r.breaker_failure_threshold, open_s=r.breaker_open_s
        )
        self.retry_budget = RetryBudget(ratio=r.retry_budget_ratio)
        self.score_cache: TtlCache[float] = TtlCache(r.score_cache_entries)
        self.feature_cache: TtlCache[Row] = TtlCache(r.feature_cache_entries)
        self._prober_task: asyncio.Task[None] | None = None
        idem = settings.idempotency
        self.idempotency_store: MemoryIdempotencyStore | RedisIdempotencyStore = (
            RedisIdempotencyStore(idem.redis_url)
            if idem.redis_url
            else MemoryIdempotencyStore(idem.max_entries)
        )
        self.idempotency = Idempotency(self.idempotency_store, idem.ttl_s)
        self._label_values: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self.metrics = Metrics(lambda: self._label_values)
        self.metrics_server: MetricsServer | None = None
        t = settings.tracing
        self.tracer_provider = build_provider(
            exporter=t.exporter, otlp_endpoint=t.otlp_endpoint, jsonl_path=t.jsonl_path
        )
        self.tracer = tracer(self.tracer_provider)
        self.request_spans = request_spans(self.tracer_provider, t.exporter, t.sample_ratio)
        self.drift = DriftMonitor(
            settings.quality.drift_window,
            settings.quality.drift_min_samples,
            every=settings.quality.drift_sample_every,
        )
        self.compliance = Compliance(settings, self.metrics.registry)
        self.snapshots: SnapshotHolder | None = None
        self.residency: Residency | None = None
        self.server: GrpcServer | None = None
        self._log_flush: asyncio.Task[None] | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._table_mtime = 0.0
        self.release: Release | None = None

    def _load_snapshot(self) -> Snapshot:
        """A snapshot of the routing table file, with the registry's state over
        it. No side effects: one that is rejected (here, or when its Triton
        pools do not come up) leaves nothing behind; ``_went_live`` follows
        the swap."""
        path = self.settings.routing.table_path
        table = RoutingTable.from_yaml(path)
        self.compliance.check_table(table)
        repo = self.settings.models.repository
        if self.release is not None:  # registry aliases/experiments over the file's
            snap = self.release.apply(table, lambda t: Snapshot.load(t, repo))
            table = snap.table
        else:
            snap = Snapshot.load(table, repo)
        for version in snap.catalog:
            for plan in version.views:
                self.features.check_features(plan.view, plan.features)
        return snap

    def _went_live(self, snap: Snapshot) -> None:
        """What follows a snapshot going live: its metric label values, its
        versions' drift references."""
        table = snap.table
        self._label_values = (frozenset(table.tenants), frozenset(table.models))
        for v in snap.catalog:
            if v.drift_reference:
                self.drift.register(v.model, v.version, list(v.feature_names), v.drift_reference)

    async def start(self) -> int:
        s = self.settings
        self.log_sink = configure_logging(s.log)
        self._log_flush = asyncio.create_task(self.log_sink.run())
        self.features.start()
        mode = self.features.sqlite_journal_mode
        if mode is not None and mode != "wal":
            # Rollback-journal mode: a materialization's commit locks readers out
            # (the read then fails after features.timeout_ms and degrades).
            log.warning("feature_store.sqlite_not_wal", journal_mode=mode)
        if s.registry.enabled:
            self.release = Release(
                s,
                features=self.features,
                metrics=self.metrics,
                servers=self.triton.get,
                snapshot=self._current,
                refresh=self._refresh_snapshot,
                audit=(
                    AuditTrailSink(self.compliance.audit)
                    if self.compliance.audit is not None
                    else None
                ),
            )
        self._table_mtime = s.routing.table_path.stat().st_mtime
        self.snapshots = SnapshotHolder(self._load_snapshot())
        self._went_live(self.snapshots.current)
        snaps = self.snapshots
        # For the sinks that persist request data (captures, audit): where, and whether.
        self.residency = Residency(s.region.name, lambda: snaps.current.table, s.region.data_root)
        await self.triton.start()
        await self.triton.sync(_pools(self.snapshots.current.table))
        await self.compliance.start(self._table)
        if self.release is not None:
            await self.release.start(list(self.snapshots.current.table.models))
        predictor = Predictor(
            snapshot=self.snapshots.get,
            features=self.features,
            ladder=Ladder(
                servers=self.triton.get,
                breakers=self.breakers,
                budget=self.retry_budget,
                score_cache=self.score_cache,
                reserve_s=s.reliability.fallback_reserve_ms / 1000,
                slow_call_s=s.reliability.slow_call_ms / 1000,
                max_call_s=s.reliability.inference_timeout_ms / 1000,
            ),
            admission=self.admission,
            breakers=self.breakers,
            feature_cache=self.feature_cache,
            tracer=self.tracer,
            drift=self.drift,
            max_candidates=s.limits.max_candidates,
            feature_timeout_s=s.features.timeout_ms / 1000,
            min_inference_budget_s=s.limits.min_inference_budget_ms / 1000,
            max_clock_skew_s=s.features.max_clock_skew_s,
            store_trial_timeout_s=s.reliability.probe_timeout_ms / 1000,
            region=s.region.name,
            observer=self.compliance.observe,
            arms=self.release.arms if self.release else None,
            shadow=self.release.shadow if self.release else None,
        )
        servicer = InferenceServicer(
            predictor,
            auth=s.auth,
            default_deadline_s=s.limits.default_deadline_ms / 1000,
            idempotency=self.idempotency,
            spans=self.request_spans,
            pii=self.compliance.pii_guard(self._table),
        )
        passthrough = Passthrough(
            snapshot=self.snapshots.get,
            servers=self.triton.get,
            admission=self.admission,
            region=s.region.name,
        )
        kserve = kserve_handler(
            passthrough, auth=s.auth, default_deadline_s=s.limits.default_deadline_ms / 1000
        )
        handlers = (kserve,) if self.release is None else (kserve, self.release.handler)
        self.server = GrpcServer(s.server, s.tls, servicer, handlers, self.metrics)
        if s.metrics.enabled:
            self.metrics_server = MetricsServer(s.metrics.host, s.metrics.port, self._scrape)
            log.info("metrics.listening", port=await self.metrics_server.start())
        port = await self.server.start()
        # Health stays NOT_SERVING until one canary round has warmed the Triton
        # connections and set the breakers: a restarted router behind a load
        # balancer takes traffic only once it can score it at full speed.
        if s.reliability.probe_interval_s <= 0:
            await self.server.set_serving(True)
        else:
            prober = Prober(
                snapshot=self.snapshots.get,
                servers=self.triton.get,
                breakers=self.breakers,
                interval_s=s.reliability.probe_interval_s,
                timeout_s=s.reliability.probe_timeout_ms / 1000,
                on_round=self._on_probe_round,
            )
            results = await prober.probe_once()
            if results:
                await self._on_probe_round(results)
            else:  # nothing routed, nothing to wait for
                await self.server.set_serving(True)
            self._prober_task = asyncio.create_task(prober.run())
        if s.routing.reload_interval_s > 0:
            self._reloader = asyncio.create_task(self._reload_loop())
        log.info(
            "router.started",
            port=port,
            bridge_port=self.server.bridge_port,
            region=s.region.name,
            routing_version=self.snapshots.current.table.version,
            allocator=malloc_library(),
        )
        return port

    def _table(self) -> RoutingTable:
        assert self.snapshots is not None
        return self.snapshots.current.table

    def _scrape(self) -> bytes:
        if self.release is not None:
            self.release.sync_metrics()
        self.metrics.sync_gauges(
            inflight=self.admission.in_flight,
            breakers=self.breakers.states(),
            shed=dict(self.admission.shed),
            drift=self.drift.snapshot(),
            caches=[
                ("score", self.score_cache.hits, self.score_cache.misses),
                ("feature", self.feature_cache.hits, self.feature_cache.misses),
                ("idempotency_replay", self.idempotency.replayed, 0),
            ],
        )
        return self.metrics.render()

    async def _on_probe_round(self, results: dict[str, bool]) -> None:
        """Ready only while some routed version can actually score."""
        if self.server is not None and results:
            await self.server.set_serving(any(results.values()))

    async def _reload_loop(self) -> None:
        """Swap in a changed routing table; an invalid one keeps the old snapshot.

        An invalid file is not read again until it changes; one whose Triton
        pools are not up yet is retried every interval until they are.
        """
        path = self.settings.routing.table_path
        while True:
            await asyncio.sleep(self.settings.routing.reload_interval_s)
            try:
                mtime = path.stat().st_mtime
                if mtime == self._table_mtime:
                    continue
                snap = self._load_snapshot()
            except OSError as e:  # the file is being replaced: look again next time
                log.error("routing.reload_rejected", error=str(e))
                continue
            except ConfigError as e:
                log.error("routing.reload_rejected", error=str(e))
                self._table_mtime = mtime  # not read again until it changes
                continue
            try:
                await self.triton.sync(_pools(snap.table))
            except Unavailable as e:
                log.error("routing.reload_rejected", error=str(e), retry=True)
                continue
            assert self.snapshots is not None
            old = self.snapshots.swap(snap)
            self._table_mtime = mtime
            self._went_live(snap)
            log.info("routing.reloaded", old=old.table.version, new=snap.table.version)

    def _current(self) -> Snapshot:
        assert self.snapshots is not None
        return self.snapshots.current

    async def _refresh_snapshot(self) -> None:
        """Swap in a snapshot rebuilt from the registry's current state."""
        try:
            snap = self._load_snapshot()
            await self.triton.sync(_pools(snap.table))
        except (OSError, ConfigError, Unavailable) as e:
            log.error("registry.refresh_rejected", error=str(e))
            return
        assert self.snapshots is not None
        old = self.snapshots.swap(snap)
        self._went_live(snap)
        log.info("registry.swapped", old=old.table.version, new=snap.table.version)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.release is not None:
            await self.release.stop()
        for task in (self._reloader, self._prober_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.compliance.stop()
        await self.triton.close()
        await self.features.close()
        if isinstance(self.idempotency_store, RedisIdempotencyStore):
            await self.idempotency_store.close()
        self.tracer_provider.shutdown()
        log.info("router.stopped")
        if self._log_flush is not None:
            self._log_flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._log_flush


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


def run(settings: Settings) -> None:
    """One router process: uvloop event loop, serve until SIGTERM (importable, so
    ``multiprocessing`` can start workers with it)."""
    uvloop.install()
    asyncio.run(serve(settings))
