"""The compliance components, built from settings for the composition root.

PII tokenization (``router.security.pii``), the audit trail (``router.audit``)
and the encrypted payload capture (``router.capture``) share key files, a
reload loop (rotations are picked up without restart and recorded in the
audit trail) and one observer hook on the Predict pipeline. ``router.app``
builds one ``Compliance`` and calls start/stop in its own order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from router.audit.log import AuditLog
from router.audit.store import JsonlAuditStore, checkpoint_path
from router.capture.store import CaptureStore, PurgeReport
from router.capture.writer import CaptureWriter
from router.errors import ConfigError, InferlineError
from router.observability.compliance import ComplianceMetrics
from router.pipeline.routing import RoutingTable
from router.pipeline.types import PredictCommand, PredictResult
from router.security.keyset import KeysetFile
from router.security.kms import LocalKeysetKms
from router.security.pii import PiiGuard, Tokenizer
from router.settings import Settings

log = structlog.get_logger("router.compliance")

ROUTER_ACTOR = "router"


class Compliance:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.metrics = ComplianceMetrics(registry)
        self.keysets: dict[str, KeysetFile] = {}
        pii_keys = self._keyset("pii", settings.pii.key_file)
        self.tokenizer = Tokenizer(pii_keys) if pii_keys is not None else None
        a = settings.audit
        self.audit: AuditLog | None = None
        if a.path is not None:
            audit_keys = self._keyset("audit", a.key_file)
            store = JsonlAuditStore(
                a.path,
                keys=(lambda: audit_keys.current) if audit_keys else lambda: None,
                fsync=a.fsync,
                checkpoint=a.checkpoint_path or checkpoint_path(a.path),
                segment_bytes=a.segment_bytes,
            )
            self.audit = AuditLog(
                store,
                queue_size=a.queue_size,
                batch_max=a.batch_max,
                linger_s=a.flush_interval_ms / 1000,
                metrics=self.metrics,
            )
        self._record_predictions = self.audit is not None and a.predictions
        c = settings.capture
        self.capture: CaptureWriter | None = None
        if c.dir is not None:
            if c.kms_keyset_file is None:
                raise ConfigError("capture.dir is set but capture.kms_keyset_file is not")
            kek = self._keyset("capture_kek", c.kms_keyset_file)
            assert kek is not None
            self.capture = CaptureWriter(
                CaptureStore(c.dir, c.segment_s),
                LocalKeysetKms(kek),
                queue_size=c.queue_size,
                metrics=self.metrics,
            )
        self._table: Callable[[], RoutingTable] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _keyset(self, name: str, path: Path | None) -> KeysetFile | None:
        if path is None:
            return None
        ks = KeysetFile(path)
        self.keysets[name] = ks
        return ks

    def pii_guard(self, table: Callable[[], RoutingTable]) -> PiiGuard | None:
        """The transport's PII hook (None when no PII key is configured)."""
        if self.tokenizer is None:
            return None
        return PiiGuard(self.tokenizer, table, opaque_ids=self.settings.pii.opaque_ids)

    def check_table(self, table: RoutingTable) -> None:
        """Reject a routing table the compliance settings cannot honour."""
        retention = self.settings.capture.retention
        for tenant, policy in table.tenants.items():
            data = policy.data
            if data.pii_fields and "pii" not in self.keysets:
                raise ConfigError(f"tenant {tenant!r} lists pii_fields but pii.key_file is unset")
            if data.capture_class is not None and data.capture_class not in retention:
                raise ConfigError(
                    f"tenant {tenant!r} capture_class {data.capture_class!r} is not a "
                    f"retention class ({sorted(retention)})"
                )

    def observe(
        self, cmd: PredictCommand, result: PredictResult | None, error: InferlineError | None
    ) -> None:
        """The Predict observer: enqueue only (see ``PredictObserver``)."""
        if self._record_predictions:
            assert self.audit is not None
            self.audit.record_prediction(cmd, result, error)
        if self.capture is not None and result is not None and self._table is not None:
            policy = self._table().tenants.get(cmd.tenant or "")
            if policy is not None:
                self.capture.offer(cmd, result, policy.data)

    async def start(self, table: Callable[[], RoutingTable]) -> None:
        """Start the writers and the key/purge loops; ``table`` is the live routing table."""
        self._table = table
        if self.capture is not None:
            self.capture.start()
            if self.settings.capture.purge_interval_s > 0:
                self._tasks.append(asyncio.create_task(self._purge_loop()))
        if self.audit is not None:
            self.audit.start()
            await self.audit.record_admin(
                actor=ROUTER_ACTOR,
                action="router.start",
                details={"keys": {n: k.current.primary for n, k in self.keysets.items()}},
            )
        if self.keysets and self.settings.pii.key_reload_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._reload_keys()))

    async def purge_once(self) -> PurgeReport | None:
        """Run the retention purge and prove it ran: an audit record with the counts
        and the oldest remaining record's time, and the last-success metric."""
        if self.capture is None:
            return None
        report = await self.capture.purge(self.settings.capture.retention_s())
        log.info("capture.purged", **report.as_details())
        if self.audit is not None:
            await self.audit.record_admin(
                actor=ROUTER_ACTOR,
                action="capture.purge",
                subject=str(self.settings.capture.dir),
                details=report.as_details(),
            )
        return report

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.purge_once()
            except OSError as e:
                log.error("capture.purge_failed", error=e.strerror)
            except Exception:
                # Retention must keep running: one bad round is logged, not fatal.
                log.exception("capture.purge_failed")
            await asyncio.sleep(self.settings.capture.purge_interval_s)

    async def reload_keys_once(self) -> None:
        """Pick up rotated key files; record each rotation in the audit trail."""
        for name, ks in self.keysets.items():
            try:
                change = ks.reload()
            except ConfigError as e:
                log.error("keys.reload_rejected", keyset=name, error=str(e))
                continue
            if change is None:
                continue
            self.metrics.key_rotations.labels(name).inc()
            log.info("keys.rotated", keyset=name, old=change[0], new=change[1])
            if self.audit is not None:
                await self.audit.record_admin(
                    actor=ROUTER_ACTOR,
                    action="key.rotate",
                    subject=name,
                    details={"old_kid": change[0], "new_kid": change[1]},
                )

    async def _reload_keys(self) -> None:
        while True:
            await asyncio.sleep(self.settings.pii.key_reload_interval_s)
            try:
                await self.reload_keys_once()
            except OSError as e:
                log.error("keys.audit_failed", error=e.strerror)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.capture is not None:
            await self.capture.stop()
        if self.audit is not None:
            with contextlib.suppress(OSError):
                await self.audit.record_admin(actor=ROUTER_ACTOR, action="router.stop")
            await self.audit.stop()
