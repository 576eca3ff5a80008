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
from router.errors import ConfigError, InferlineError
from router.observability.compliance import ComplianceMetrics
from router.pipeline.routing import RoutingTable
from router.pipeline.types import PredictCommand, PredictResult
from router.security.keyset import KeysetFile
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
            )
            self.audit = AuditLog(
                store, queue_size=a.queue_size, batch_max=a.batch_max, metrics=self.metrics
            )
        self._record_predictions = self.audit is not None and a.predictions
        self._reloader: asyncio.Task[None] | None = None

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

    async def start(self) -> None:
        if self.audit is not None:
            self.audit.start()
            await self.audit.record_admin(
                actor=ROUTER_ACTOR,
                action="router.start",
                details={"keys": {n: k.current.primary for n, k in self.keysets.items()}},
            )
        if self.keysets and self.settings.pii.key_reload_interval_s > 0:
            self._reloader = asyncio.create_task(self._reload_keys())

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
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        if self.audit is not None:
            with contextlib.suppress(OSError):
                await self.audit.record_admin(actor=ROUTER_ACTOR, action="router.stop")
            await self.audit.stop()
