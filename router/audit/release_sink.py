"""The registry's audit hook (``router.registry.audit.AuditSink``) on the
hash-chained trail: every release action, allowed or refused, becomes one admin
record, written and fsynced before the admin call answers."""

from __future__ import annotations

from router.audit.log import AuditLog
from router.registry.audit import AuditEvent


class AuditTrailSink:
    def __init__(self, log: AuditLog) -> None:
        self._log = log

    def record(self, event: AuditEvent) -> None:
        self._log.record_admin_sync(
            actor=event.actor,
            action=f"release.{event.action}",
            subject=event.target,
            details={"outcome": event.outcome, "at": event.at, **dict(event.detail)},
        )
