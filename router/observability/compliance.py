"""Metrics of the compliance machinery: audit trail, payload capture, purge.

Registered on the router's own registry (``Metrics.registry``), next to the
request series, so one scrape shows them. Labels are fixed small sets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from router.observability.metrics import _in_process_values


class ComplianceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = r
        with _in_process_values():
            self.audit_records = Counter(
                "inferline_audit_records", "Audit records written, by kind (prediction|admin).",
                ["kind"], registry=r,
            )  # fmt: skip
            self.audit_dropped = Counter(
                "inferline_audit_dropped",
                "Prediction audit records dropped because the writer queue was full "
                "or the write failed (admin records are never dropped: they fail the action).",
                ["reason"], registry=r,
            )  # fmt: skip
            self.audit_queue = Gauge(
                "inferline_audit_queue_depth", "Prediction audit records waiting.", registry=r
            )
            self.capture_records = Counter(
                "inferline_capture_records", "Encrypted payload captures written, by class.",
                ["class"], registry=r,
            )  # fmt: skip
            self.capture_dropped = Counter(
                "inferline_capture_dropped", "Sampled captures dropped (queue full, write error).",
                ["reason"], registry=r,
            )  # fmt: skip
            self.purge_last_success = Gauge(
                "inferline_capture_purge_last_success_timestamp_seconds",
                "When the retention purge last completed (0: never in this process).",
                registry=r,
            )
            self.purge_deleted = Counter(
                "inferline_capture_purged_records", "Capture records purged, by class.",
                ["class"], registry=r,
            )  # fmt: skip
            self.key_rotations = Counter(
                "inferline_key_rotations", "Primary key changes picked up from key files.",
                ["keyset"], registry=r,
            )  # fmt: skip
