"""Prometheus metrics served by the router.

One ``Metrics`` object with its own registry (never the global one, so tests and
several routers in one process do not share series) is built by the composition
root and passed down. The per-request series are recorded once, at the end of
each RPC, from the same request context the log line is written from, so
metrics and logs never disagree.

Label values are bounded, because every distinct value is a series held in
memory by this process and by Prometheus: tenants and models must be in the
routing table, every free-form label (version, arm, feature, view, reason...)
has a cap on distinct values, and anything unknown or over the cap is recorded
as ``other``. Codes are gRPC status names and stages a fixed set.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server as _start_http_server
from prometheus_client import values as _values
from prometheus_client.registry import Collector

log = structlog.get_logger("router.metrics")

# Edges around the SLO thresholds (25 ms p95, 50 ms p99) with detail below 5 ms,
# where the router's own overhead lives.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
STAGES = frozenset(
    {"auth", "admission", "routing", "features", "quality", "inference", "fallback", "total"}
)
OTHER = "other"
NONE = "none"


class _LoopValue(_values.MutexValue):  # type: ignore[misc]
    """A metric value without a lock: every ``Metrics`` write happens on the
    router's event loop (which also serves ``/metrics``), and another thread
    reading a float reads a whole one. The lock was two of the ~three calls in
    each of a request's ~12 increments."""

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def get(self) -> float:
        return float(self._value)


class _LoopCounter(Counter):  # type: ignore[misc]
    """``Counter`` whose ``inc`` skips the checks a labelled child never needs
    (observability, exemplars); negative amounts still raise."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0 or exemplar:
            super().inc(amount, exemplar)
            return
        self._value._value += amount  # a _LoopValue (_in_process_values)


class _LoopHistogram(Histogram):  # type: ignore[misc]
    """``Histogram`` whose ``observe`` finds the bucket by bisection (C) instead
    of a Python loop over 15 bounds; same buckets and sum."""

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar or amount != amount:  # NaN: the parent counts it in no bucket
            super().observe(amount, exemplar)
            return
        # _LoopValues (_in_process_values): their fields, not two more calls.
        self._sum._value += amount
        self._buckets[bisect_left(self._upper_bounds, amount)]._value += 1


_FOLD_EVERY = 32


class _Fold(Collector):
    """Registry member that folds ``Metrics``' buffered RPCs into their series
    when the registry is collected; exports nothing itself."""

    def __init__(self, fold: Callable[[], None]) -> None:
        self._fold = fold

    def collect(self) -> Iterable[Any]:
        self._fold()
        return []

    def describe(self) -> Iterable[Any]:
        return []


@contextlib.contextmanager
def _in_process_values() -> Iterator[None]:
    """Create metric values in this process's memory, whatever the environment,
    as ``_LoopValue``.

    Importing feast (0.67) sets PROMETHEUS_MULTIPROC_DIR for its Gunicorn mode;
    if that happens before prometheus_client is imported (the router imports its
    feature store first), every value becomes an mmap-backed file shared by all
    registries in the process: ~60% slower per request, and two ``Metrics``
    would count into each other. prometheus_client reads ``values.ValueClass``
    each time it creates a value, so swapping it around creation suffices.
    """
    saved = _values.ValueClass
    _values.ValueClass = _LoopValue
    try:
        yield
    finally:
        _values.ValueClass = saved


_Hot = tuple[Any, Any, str, str, dict[str, Any]]
"""A request shape's resolved series: requests and latency children, the model
and version labels, and its stage histograms by stage name."""
_HOT_MAX = 4096


class LabelBound:
    """Maps raw values to at most ``cap`` distinct label values (+ other/none).

    First come, first kept: once ``cap`` values were seen, new ones become
    ``other`` for the life of the process (the series already exported cannot be
    taken back without breaking rate() on them).
    """

    __slots__ = ("_seen", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._seen: set[str] = set()

    def __call__(self, value: Any, allowed: frozenset[str] | None = None) -> str:
        text = "" if value is None else str(value)
        if not text:
            return NONE
        if text in self._seen:
            return text if allowed is None or text in allowed else OTHER
        if (allowed is not None and text not in allowed) or len(self._seen) >= self.cap:
            return OTHER
        self._seen.add(text)
        return text


@dataclass(frozen=True, slots=True)
class Caps:
    """Most distinct values per label (a routing table larger than this is
    still served; its extra tenants or models are aggregated as ``other``)."""

    tenants: int = 200
    models: int = 50
    versions: int = 100  # (model, version) pairs; versions roll, routers restart
    arms: int = 20
    methods: int = 32
    features: int = 1000  # (model, feature) pairs in DQ series
    views: int = 50
    reasons: int = 50
    caches: int = 16


class Metrics:
    def __init__(
        self,
        known: Callable[[], tuple[frozenset[str], frozenset[str]]],
        caps: Caps | None = None,
    ) -> None:
        """``known()`` returns the (tenants, models) allowed as label values: the
        routing table's, re-read on every call so a reload takes effect."""
        self._known = known
        self.caps = caps = caps or Caps()
        self._tenant = LabelBound(caps.tenants)
        self._model = LabelBound(caps.models)
        self._version = LabelBound(caps.versions)
        self._arm = LabelBound(caps.arms)
        self._method = LabelBound(caps.methods)
        self._feature = LabelBound(caps.features)
        self._view = LabelBound(caps.views)
        self._reason = LabelBound(caps.reasons)
        self._cache_name = LabelBound(caps.caches)
        self._synced: dict[tuple[str, ...], float] = {}
        self._drift_keys: set[tuple[str, str, str]] = set()
        # Label tuple -> child: prometheus_client's labels() validates and locks
        # on every call (~1 us); a dict hit is ~50 ns.
        self._children: dict[tuple[Any, ...], Any] = {}
        self._hot: dict[tuple[Any, ...], _Hot] = {}
        self._pending: list[
            tuple[tuple[frozenset[str], frozenset[str]], str, str, float, Mapping[str, Any]]
        ] = []
        self.registry = CollectorRegistry(auto_describe=True)
        # First in the registry: every collection folds the buffered RPCs first.
        self.registry.register(_Fold(self.fold))
        with _in_process_values():
            self._define(self.registry)

    def _define(self, r: CollectorRegistry) -> None:
        self.requests = _LoopCounter(
            "inferline_requests", "Answered RPCs by outcome.",
            ["method", "tenant", "model", "version", "arm", "code", "degraded"], registry=r,
        )  # fmt: skip
        self.latency = _LoopHistogram(
            "inferline_request_duration_seconds", "End-to-end router latency of answered RPCs.",
            ["method", "model", "code"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.stages = _LoopHistogram(
            "inferline_stage_duration_seconds", "Per-stage latency inside the router.",
            ["stage", "model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.degraded = _LoopCounter(
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
        self.freshness = _LoopCounter(
            "inferline_feature_freshness", "Feature rows read, by view and freshness.",
            ["view", "status"], registry=r,
        )  # fmt: skip
        self.schema_mismatch = Counter(
            "inferline_schema_mismatch", "Requests for a version whose schema hash mismatched.",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.dq_violations = Counter(
            "inferline_dq_violations", "Rows violating the training profile, by feature, kind "
            "(null|type|range|cardinality) and action (impute|reject).",
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

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            with _in_process_values():
                child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(
        self,
        *,
        method: str,
        code: str,
        duration_s: float,
        tenant: str | None = None,
        model: str | None = None,
        version: int | str | None = None,
        arm: str | None = None,
        degraded: bool = False,
        fallback_level: str | None = None,
        degraded_reasons: Iterable[str] = (),
        stages_us: Mapping[str, int] | None = None,
        dq_violations: Mapping[str, int] | None = None,
        freshness: Mapping[str, int] | None = None,
        known: tuple[frozenset[str], frozenset[str]] | None = None,
    ) -> None:
        """Record one finished RPC. ``method`` may be the full gRPC path.

        ``dq_violations``: "feature:kind:action" -> rows (``QualityResult.counts()``);
        ``freshness``: "view:STATUS" -> rows; ``known``: ``known()`` when the RPC
        ended (default: now).
        """
        tenants, models = self._known() if known is None else known
        # The same caller, model and outcome resolve to the same series: resolve
        # labels once per distinct request shape (label bounds never un-admit a
        # value, and a table reload brings new ``known`` sets, hence new keys).
        shape = (tenants, models, method, tenant, model, version, arm, code, degraded)
        hot = self._hot.get(shape)
        if hot is None:
            hot = self._resolve(
                tenants, models, method, tenant, model, version, arm, code, degraded
            )
            if len(self._hot) >= _HOT_MAX:
                self._hot.clear()
            self._hot[shape] = hot
        requests, latency, model_l, version_l, stage_children = hot
        requests.inc()
        latency.observe(duration_s)
        if stages_us:
            for stage, us in stages_us.items():
                child = stage_children.get(stage)
                if child is None:
                    stage_l = stage if stage in STAGES else OTHER
                    child = stage_children[stage] = self._child(self.stages, stage_l, model_l)
                child.observe(us / 1e6)
        if degraded:
            level = fallback_level or "PRIMARY"
            reasons = tuple(degraded_reasons) or ("unknown",)
            for reason in reasons:
                self._child(self.degraded, model_l, level, self._reason(reason)).inc()
            if "schema_mismatch" in reasons:
                self._child(self.schema_mismatch, model_l, version_l).inc()
        if dq_violations:
            for key, n in dq_violations.items():
                feature, kind, action = key.rsplit(":", 2)  # a feature name may hold ":"
                feature_l = self._feature(f"{model_l}:{feature}").partition(":")[2] or OTHER
                self._child(self.dq_violations, model_l, feature_l, kind, action).inc(n)
        if freshness:
            for key, n in freshness.items():
                view, _, status = key.partition(":")
                self._child(self.freshness, self._view(view), status).inc(n)

    def _resolve(
        self,
        tenants: frozenset[str],
        models: frozenset[str],
        method: str,
        tenant: str | None,
        model: str | None,
        version: int | str | None,
        arm: str | None,
        code: str,
        degraded: bool,
    ) -> _Hot:
        tenant_l = self._tenant(tenant, tenants)
        model_l = self._model(model, models)
        if model_l in (NONE, OTHER) or version is None:
            version_l = NONE
        else:
            version_l = self._version(f"{model_l}@{version}").partition("@")[2] or OTHER
        short = self._method(method.rsplit("/", 1)[-1])
        degraded_l = "true" if degraded else "false"
        requests = self._child(
            self.requests, short, tenant_l, model_l, version_l, self._arm(arm), code, degraded_l
        )
        latency = self._child(self.latency, short, model_l, code)
        return requests, latency, model_l, version_l, {}

    def observe_rpc(
        self, method: str, code: str, duration_s: float, ctx: Mapping[str, Any]
    ) -> None:
        """Record one finished RPC from its request context (the log line's fields;
        never changed after the request: ``router.logging.bind_request`` replaces it).

        Buffered, and folded into the series ``_FOLD_EVERY`` RPCs at a time and
        before every collection: one RPC's dozen series updates cost ~4 us in a
        warm loop but ~16 us between requests, when the series' objects have left
        the CPU's caches (py-spy, docs/benchmarks.md)."""
        pending = self._pending
        # The routing table's tenants and models as of now: labels resolve as
        # if recorded at once, whatever a reload does before the fold.
        pending.append((self._known(), method, code, duration_s, ctx))
        if len(pending) >= _FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Record the buffered RPCs now."""
        pending, self._pending = self._pending, []
        for known, method, code, duration_s, ctx in pending:
            try:
                self._observe_ctx(known, method, code, duration_s, ctx)
            except Exception:
                # Bookkeeping must never fail the request (or the scrape) that
                # happens to trigger the fold, nor lose the other buffered RPCs.
                log.exception("metrics.observe_failed", method=method)

    def _observe_ctx(
        self,
        known: tuple[frozenset[str], frozenset[str]],
        method: str,
        code: str,
        duration_s: float,
        ctx: Mapping[str, Any],
    ) -> None:
        self.observe_request(
            known=known,
            method=method,
            code=code,
            duration_s=duration_s,
            tenant=ctx.get("tenant"),
            model=ctx.get("model"),
            version=ctx.get("version"),
            arm=ctx.get("arm"),
            degraded=bool(ctx.get("degraded")),
            fallback_level=ctx.get("fallback_level"),
            degraded_reasons=ctx.get("degraded_reasons") or (),
            stages_us=ctx.get("stages_us"),
            dq_violations=ctx.get("dq_violations"),
            freshness=ctx.get("freshness"),
        )

    def _sync_counter(self, metric: Counter, labels: tuple[str, ...], total: float) -> None:
        """Advance a counter to a total counted elsewhere (a drop means the
        source was reset: count its new total, as Prometheus would)."""
        key = (str(id(metric)), *labels)
        last = self._synced.get(key, 0.0)
        delta = total - last if total >= last else total
        if delta > 0 or key not in self._synced:
            self._child(metric, *labels).inc(delta)
        self._synced[key] = total

    def sync_gauges(
        self,
        *,
        inflight: int,
        breakers: Mapping[str, str],
        shed: Mapping[tuple[str, str], int],
        caches: Iterable[tuple[str, int, int]],
        drift: Mapping[tuple[str, int], Mapping[str, float]] | None = None,
    ) -> None:
        """Copy state owned elsewhere (admission, breakers, caches, drift) into series.

        Called just before each scrape, so the hot path pays nothing for them.
        Drift series of versions no longer in ``drift`` (retired, or under the
        minimum sample count) are removed: a stale PSI must not keep an alert on.
        """
        self.inflight.set(inflight)
        for name, state in breakers.items():
            self._child(self.breaker_open, name).set(0 if state == "closed" else 1)
        for (reason, priority), count in shed.items():
            self._sync_counter(self.shed, (self._reason(reason), priority), count)
        for name, hits, misses in caches:
            name_l = self._cache_name(name)
            self._sync_counter(self.cache, (name_l, "hit"), hits)
            self._sync_counter(self.cache, (name_l, "miss"), misses)
        if drift is not None:
            self._sync_drift(drift)

    def _sync_drift(self, drift: Mapping[tuple[str, int], Mapping[str, float]]) -> None:
        _, models = self._known()
        live: set[tuple[str, str, str]] = set()
        for (model, version), values in drift.items():
            model_l = self._model(model, models)
            if model_l in (NONE, OTHER):
                continue  # an aggregate PSI across models means nothing
            for feature, value in values.items():
                key = (model_l, str(version), feature)
                live.add(key)
                with _in_process_values():
                    self.drift_psi.labels(*key).set(value)
        for key in self._drift_keys - live:
            with warnings.catch_warnings():
                # Warns whenever PROMETHEUS_MULTIPROC_DIR is set (feast sets it);
                # our values are in-process (_in_process_values), so removal works.
                warnings.filterwarnings("ignore", "Removal of labels", UserWarning)
                self.drift_psi.remove(*key)
        self._drift_keys = live

    def render(self) -> bytes:
        """The text exposition of this registry (what ``GET /metrics`` returns)."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class HttpEndpoint:
    """A running threaded ``/metrics`` server; ``port`` is the bound one."""

    host: str
    port: int
    _server: Any
    _worker: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._worker.join(timeout=5)


def start_http_server(metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> HttpEndpoint:
    """Serve ``metrics`` on a daemon thread (port 0: any free port, reported back).

    For tools, sidecars and tests. The router itself serves ``/metrics`` on its
    event loop (router/transport/metrics_http.py) so that ``sync_gauges`` reads
    loop-owned state without locks.
    """
    server, thread = _start_http_server(port, addr=host, registry=metrics.registry)
    return HttpEndpoint(host, int(server.server_port), server, thread)
