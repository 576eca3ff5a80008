"""``AuditLog``: what the router records, and when.

Admin actions (registry changes, alias moves, quota changes, key rotations,
purges) are written synchronously: ``record_admin`` returns after the record is
on disk (fsynced) and raises if it cannot be written, so an action is never
acknowledged without its record. Predictions are recorded off the hot path:
the request only appends a small tuple to a bounded queue; a background task
formats, seals and writes them in batches (group commit: it lingers ``linger_s``
after the first record so one fsync covers what arrives meanwhile). When the
queue is full the record is dropped and counted (``inferline_audit_dropped{reason="queue_full"}``):
under overload the trail loses prediction records rather than latency, and the
counter says how many. Prediction records carry identity, tenant, model
version, score buckets and degradation, never features, entity values or
candidate ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from router.audit.store import AuditStore
from router.batching import BatchQueue
from router.errors import InferlineError
from router.observability.compliance import ComplianceMetrics
from router.pipeline.types import PredictCommand, PredictResult

log = structlog.get_logger("router.audit")

SCORE_BUCKETS = 10
"""Scores are recorded as deciles: enough to audit a decision, not to replay it."""

_Pending = tuple[float, PredictCommand, PredictResult | None, str | None]


def score_bucket(score: float) -> int:
    return min(max(int(score * SCORE_BUCKETS), 0), SCORE_BUCKETS - 1)


def prediction_event(
    cmd: PredictCommand, result: PredictResult | None, error_code: str | None
) -> dict[str, Any]:
    details: dict[str, Any] = {
        "request_id": cmd.request_id,
        "candidates": len(cmd.candidates),
        "code": error_code or "OK",
    }
    subject = cmd.alias or cmd.version or ""
    if result is not None:
        subject = f"{result.model}@{result.version}"
        details |= {
            "alias": result.alias,
            "score_buckets": [score_bucket(s) for s in result.scores],
            "degraded": result.degraded,
            "fallback_level": result.fallback_level.name,
            "degraded_reasons": result.degraded_reasons,
        }
    return {
        "actor": cmd.identity or (f"tenant:{cmd.tenant}" if cmd.tenant else "anonymous"),
        "tenant": cmd.tenant,
        "action": "predict",
        "subject": subject,
        "details": details,
    }


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        *,
        queue_size: int = 10_000,
        batch_max: int = 512,
        linger_s: float = 0.05,
        metrics: ComplianceMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._queue: BatchQueue[_Pending] = BatchQueue(
            self._write, size=queue_size, batch_max=batch_max, linger_s=linger_s
        )
        self._metrics = metrics or ComplianceMetrics()
        self._clock = clock
        self.dropped = 0

    def start(self) -> None:
        self._queue.start()

    def record_prediction(
        self, cmd: PredictCommand, result: PredictResult | None, error: InferlineError | None
    ) -> None:
        """Non-blocking: queue the prediction's record, or drop and count it."""
        code = error.code.name if error is not None else None
        if not self._queue.offer((self._clock(), cmd, result, code)):
            self.dropped += 1
            self._metrics.audit_dropped.labels("queue_full").inc()

    async def record_admin(
        self,
        *,
        actor: str,
        action: str,
        subject: str = "",
        tenant: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write one admin record durably before returning it (raises OSError on failure).

        ``action`` names what was done ("model.register", "alias.move",
        "canary.start", "rollback", "quota.change", "key.rotate",
        "capture.purge"); ``subject`` what it was done to.
        """
        return await asyncio.to_thread(
            self.record_admin_sync,
            actor=actor,
            action=action,
            subject=subject,
            tenant=tenant,
            details=details,
        )

    def record_admin_sync(
        self,
        *,
        actor: str,
        action: str,
        subject: str = "",
        tenant: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``record_admin`` for synchronous callers (the registry's audit hook):
        admin actions are rare, so one blocking append + fsync is acceptable."""
        event = {
            "actor": actor,
            "tenant": tenant,
            "action": action,
            "subject": subject,
            "details": dict(details or {}),
        }
        records = self._store.append([event], self._clock())
        self._metrics.audit_records.labels("admin").inc()
        log.info("audit.admin", action=action, subject=subject, seq=records[0]["seq"])
        return records[0]

    async def _write(self, batch: list[_Pending]) -> None:
        events = [
            {**prediction_event(cmd, result, code), "at": at} for at, cmd, result, code in batch
        ]
        try:
            await asyncio.to_thread(self._store.append, events, batch[-1][0])
        except (OSError, ValueError) as e:  # ValueError: a trail whose last record is unreadable
            self.dropped += len(batch)
            self._metrics.audit_dropped.labels("write_error").inc(len(batch))
            error = e.strerror if isinstance(e, OSError) else str(e)
            log.error("audit.write_failed", error=error, records=len(batch))
            return
        self._metrics.audit_records.labels("prediction").inc(len(batch))
        self._metrics.audit_queue.set(self._queue.qsize())

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (up to ``timeout_s``), stop the writer, close the store."""
        await self._queue.stop(timeout_s)
        self._store.close()
