"""The audit hook: every admin action, allowed or refused, is reported here.

A hash-chained audit trail is built separately; it implements ``AuditSink``
and the composition root passes it in. Until then the default drops events
(they are also logged as ``release.*`` events by the service).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class AuditEvent:
    actor: str
    """Authenticated tenant (or operator) that asked."""
    action: str
    """register | alias | canary | experiment | shadow | promote | rollback | outcomes ..."""
    target: str
    """What it touched: "fraud", "fraud@3", "fraud:prod"."""
    outcome: Literal["ok", "denied", "failed"]
    detail: Mapping[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))


class AuditSink(Protocol):
    def record(self, event: AuditEvent) -> None:
        """Persist ``event``; must not raise for a well-formed event."""
        ...


class NoopAuditSink:
    def record(self, event: AuditEvent) -> None:
        return None


class MemoryAuditSink:
    """Keeps events in a list (tests, and ``status`` in a single process)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)
