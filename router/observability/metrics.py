"""Prometheus metrics served by the router.

One ``Metrics`` object with its own registry is built by the composition root
and passed down. The per-request series are recorded once, at the end of each
RPC, from the same request context the log line is written from, so metrics
and logs never disagree. Label values are bounded: tenants and models must be
in the routing table (anything else is recorded as "other"), codes are gRPC
status names, stages and levels are fixed sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Edges around the SLO thresholds (25 ms p95, 50 ms p99) with detail below 5 ms,
# where the router's own overhead lives.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
OTHER = "other"


class Metrics:
    def __init__(self, known: Callable[[], tuple[frozenset[str], frozenset[str]]]) -> None:
        """``known()`` returns the (tenants, models) allowed as label values."""
        self._known = known
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "inferline_requests", "Answered RPCs by outcome.",
            ["method", "tenant", "model", "version", "code", "degraded"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "inferline_request_duration_seconds", "End-to-end router latency of answered RPCs.",
            ["method", "model", "code"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.stages = Histogram(
            "inferline_stage_duration_seconds", "Per-stage latency inside the router.",
            ["stage", "model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.degraded = Counter(
            "inferline_degraded", "Degraded answers by fallback level and reason.",
            ["model", "level", "reason"], registry=r,
        )  # fmt: skip
        self.inflight = Gauge(
            "inferline_inflight_requests",
            "Requests in flight in this process (HPA signal).",
            registry=r,
        )
        self.shed = Counter(
            "inferline_shed", "Requests refused by admission control.",
            ["reason", "priority"], registry=r,
        )  # fmt: skip
        self.freshness = Counter(
            "inferline_feature_freshness", "Feature rows read, by view and freshness.",
            ["view", "status"], registry=r,
        )  # fmt: skip
        self.schema_mismatch = Counter(
            "inferline_schema_mismatch", "Requests for a version whose schema hash mismatched.",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.dq_violations = Counter(
            "inferline_dq_violations", "Data-quality violations by feature, kind and action.",
            ["model", "feature", "kind", "action"], registry=r,
        )  # fmt: skip
        self.drift_psi = Gauge(
            "inferline_drift_psi", "PSI of the live window vs training, per feature and score.",
            ["model", "version", "feature"], registry=r,
        )  # fmt: skip
        self.breaker_open = Gauge(
            "inferline_breaker_open", "1 while a circuit breaker is open or half-open.",
            ["breaker"], registry=r,
        )  # fmt: skip
        self.cache = Counter(
            "inferline_cache_lookups", "Router cache lookups by cache and result.",
            ["cache", "result"], registry=r,
        )  # fmt: skip

    def _bounded(self, value: Any, allowed: frozenset[str]) -> str:
        text = "" if value is None else str(value)
        if not text:
            return "none"
        return text if text in allowed else OTHER

    def observe_rpc(
        self, method: str, code: str, duration_s: float, ctx: Mapping[str, Any]
    ) -> None:
        """Record one finished RPC from its request context (the log line's fields)."""
        tenants, models = self._known()
        tenant = self._bounded(ctx.get("tenant"), tenants)
        model = self._bounded(ctx.get("model"), models)
        version = str(ctx.get("version", "none")) if model not in ("none", OTHER) else "none"
        degraded = "true" if ctx.get("degraded") else "false"
        short = method.rsplit("/", 1)[-1]
        self.requests.labels(short, tenant, model, version, code, degraded).inc()
        self.latency.labels(short, model, code).observe(duration_s)
        stages: Mapping[str, int] = ctx.get("stages_us") or {}
        for stage, us in stages.items():
            self.stages.labels(stage, model).observe(us / 1e6)
        if ctx.get("degraded"):
            level = str(ctx.get("fallback_level", "PRIMARY"))
            for reason in ctx.get("degraded_reasons") or ("unknown",):
                self.degraded.labels(model, level, reason).inc()
            if "schema_mismatch" in (ctx.get("degraded_reasons") or ()):
                self.schema_mismatch.labels(model, version).inc()
        violations: Mapping[str, int] = ctx.get("dq_violations") or {}
        for key, n in violations.items():
            feature, kind, action = key.split(":")
            self.dq_violations.labels(model, feature, kind, action).inc(n)
        freshness: Mapping[str, int] = ctx.get("freshness") or {}
        for key, n in freshness.items():
            view, _, status = key.partition(":")
            self.freshness.labels(view, status).inc(n)

    def sync_gauges(
        self,
        *,
        inflight: int,
        breakers: Mapping[str, str],
        shed: Mapping[tuple[str, str], int],
        caches: Iterable[tuple[str, int, int]],
        drift: Mapping[tuple[str, int], Mapping[str, float]] | None = None,
    ) -> None:
        """Copy state owned elsewhere (admission, breakers, caches) into series.

        Called just before each scrape, so the hot path pays nothing for them.
        """
        self.inflight.set(inflight)
        for name, state in breakers.items():
            self.breaker_open.labels(name).set(0 if state == "closed" else 1)
        for (reason, priority), count in shed.items():
            child = self.shed.labels(reason, priority)
            child.inc(max(0, count - child._value.get()))
        for (model, version), values in (drift or {}).items():
            for feature, value in values.items():
                self.drift_psi.labels(model, str(version), feature).set(value)
        for name, hits, misses in caches:
            for result, count in (("hit", hits), ("miss", misses)):
                child = self.cache.labels(name, result)
                child.inc(max(0, count - child._value.get()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
