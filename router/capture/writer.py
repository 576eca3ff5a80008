"""Sampled payload capture, off the hot path.

For a tenant whose routing-table entry names a ``capture_class`` and a
``capture_ratio``, that fraction of answered requests is captured: the
(already tokenized) candidates, the request id and the scores. The request
only draws a random number and appends a tuple to a bounded queue; a
background task seals each record (per-record data key, per-field AES-GCM,
data key wrapped by the KMS) in a worker thread and appends it to the store.
A full queue drops the capture and counts it (``inferline_capture_dropped``):
capture is best-effort by design, unlike the audit trail's admin records.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from router.batching import BatchQueue
from router.capture.envelope import seal
from router.capture.store import CaptureStore, PurgeReport, safe_name
from router.observability.compliance import ComplianceMetrics
from router.pipeline.routing import DataPolicy
from router.pipeline.types import PredictCommand, PredictResult
from router.security.kms import Kms

log = structlog.get_logger("router.capture")

_Pending = tuple[float, str, PredictCommand, PredictResult]


def capture_fields(cmd: PredictCommand, result: PredictResult) -> dict[str, Any]:
    """The encrypted part of a record (values are tokens where the tenant has PII)."""
    return {
        "request_id": cmd.request_id,
        "candidates": [
            {"id": c.candidate_id, "entities": dict(c.entities), "features": dict(c.features)}
            for c in cmd.candidates
        ],
        "scores": result.scores,
        "degraded_reasons": result.degraded_reasons,
    }


class CaptureWriter:
    def __init__(
        self,
        store: CaptureStore,
        kms: Kms,
        *,
        queue_size: int = 2_000,
        batch_max: int = 256,
        metrics: ComplianceMetrics | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self._kms = kms
        self._queue: BatchQueue[_Pending] = BatchQueue(
            self._write, size=queue_size, batch_max=batch_max
        )
        self._metrics = metrics or ComplianceMetrics()
        self._clock = clock
        self._rng = rng
        self.dropped = 0

    def start(self) -> None:
        self._queue.start()

    def offer(self, cmd: PredictCommand, result: PredictResult, policy: DataPolicy) -> None:
        cls = policy.capture_class
        if cls is None or policy.capture_ratio <= 0 or self._rng() >= policy.capture_ratio:
            return
        if not self._queue.offer((self._clock(), cls, cmd, result)):
            self._drop("queue_full")

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped += n
        self._metrics.capture_dropped.labels(reason).inc(n)

    def seal_batch(self, batch: list[_Pending]) -> list[dict[str, Any]]:
        out = []
        for ts, cls, cmd, result in batch:
            tenant = cmd.tenant or ""
            if not (safe_name(tenant) and safe_name(cls)):
                self._drop("unsafe_name")
                continue
            meta = {
                "id": uuid.uuid4().hex,
                "ts": ts,
                "tenant": tenant,
                "class": cls,
                "model": result.model,
                "version": result.version,
                "fallback_level": result.fallback_level.name,
            }
            out.append(seal(self._kms, meta, capture_fields(cmd, result)))
        return out

    def _write_batch(self, batch: list[_Pending]) -> int:
        records = self.seal_batch(batch)
        self.store.append(records)
        for rec in records:
            self._metrics.capture_records.labels(rec["class"]).inc()
        return len(records)

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            await asyncio.to_thread(self._write_batch, batch)
        except OSError as e:
            self._drop("write_error", len(batch))
            log.error("capture.write_failed", error=e.strerror, records=len(batch))

    async def purge(self, retention_s: dict[str, float]) -> PurgeReport:
        report = await asyncio.to_thread(self.store.purge, retention_s, self._clock())
        self.record_purge(report)
        return report

    def record_purge(self, report: PurgeReport) -> None:
        for cls, n in report.deleted_records.items():
            self._metrics.purge_deleted.labels(cls).inc(n)
        self._metrics.purge_last_success.set(report.now)

    async def stop(self, timeout_s: float = 5.0) -> None:
        await self._queue.stop(timeout_s)
