"""Metrics: series and values recorded per request, bounded labels, scrape-time sync."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import values as prom_values
from prometheus_client.parser import text_string_to_metric_families

from router.observability.metrics import (
    LATENCY_BUCKETS,
    OTHER,
    Caps,
    LabelBound,
    Metrics,
    start_http_server,
)

PREDICT = "/inferline.v1.InferenceService/Predict"


def _samples(m: Metrics) -> list[Any]:
    return [s for f in text_string_to_metric_families(m.render().decode()) for s in f.samples]


def _value(m: Metrics, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in _samples(m)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _metrics(tenants: set[str] | None = None, caps: Caps | None = None) -> Metrics:
    known = (frozenset(tenants or {"demo", "payments"}), frozenset({"fraud", "ranker"}))
    return Metrics(lambda: known, caps)


def test_one_request_records_every_series() -> None:
    m = _metrics()
    m.observe_rpc(
        PREDICT,
        "OK",
        0.012,
        {
            "tenant": "demo",
            "model": "fraud",
            "version": 2,
            "arm": "treatment",
            "degraded": True,
            "fallback_level": "LAST_KNOWN_GOOD",
            "degraded_reasons": ["features_stale", "schema_mismatch"],
            "stages_us": {"routing": 40, "features": 900, "inference": 2500, "total": 3600},
            "dq_violations": {"txn_count_24h:range:impute": 2},
            "freshness": {"account_features:STALE": 1},
        },
    )
    labels = dict(method="Predict", tenant="demo", model="fraud", version="2", arm="treatment")
    assert _value(m, "inferline_requests_total", **labels, code="OK", degraded="true") == 1
    assert _value(m, "inferline_request_duration_seconds_count", model="fraud", code="OK") == 1
    assert _value(m, "inferline_request_duration_seconds_bucket", le="0.015", code="OK") == 1
    assert _value(m, "inferline_request_duration_seconds_bucket", le="0.01", code="OK") == 0
    assert _value(m, "inferline_stage_duration_seconds_sum", stage="inference") == 0.0025
    assert _value(m, "inferline_stage_duration_seconds_bucket", stage="routing", le="0.0005") == 1
    assert (
        _value(m, "inferline_degraded_total", model="fraud", level="LAST_KNOWN_GOOD",
               reason="features_stale")
        == 1
    )  # fmt: skip
    assert _value(m, "inferline_schema_mismatch_total", model="fraud", version="2") == 1
    assert (
        _value(m, "inferline_dq_violations_total", model="fraud", feature="txn_count_24h",
               kind="range", action="impute")
        == 2
    )  # fmt: skip
    assert _value(m, "inferline_feature_freshness_total", view="account_features",
                  status="STALE") == 1  # fmt: skip


def test_a_feature_name_with_a_colon_is_counted_and_breaks_nothing() -> None:
    """A request feature named "geo:lat": its violations are counted under that
    name, and the 31 RPCs buffered with it are all recorded."""
    m = _metrics()
    m.observe_rpc(
        PREDICT, "OK", 0.001, {"tenant": "demo", "model": "fraud",
                               "dq_violations": {"geo:lat:range:impute": 1}}
    )  # fmt: skip
    for _ in range(31):
        m.observe_rpc(PREDICT, "OK", 0.001, {"tenant": "demo", "model": "fraud"})
    assert _value(m, "inferline_requests_total", tenant="demo", code="OK") == 32
    assert _value(m, "inferline_dq_violations_total", feature="geo:lat", kind="range") == 1


def test_one_unrecordable_rpc_loses_no_other_and_fails_no_caller() -> None:
    from structlog.testing import capture_logs

    m = _metrics()
    with capture_logs() as logs:
        m.observe_rpc(PREDICT, "OK", 0.001, {"tenant": "demo", "stages_us": "not a mapping"})
        for _ in range(40):  # past a fold: nothing raises here
            m.observe_rpc(PREDICT, "OK", 0.001, {"tenant": "demo", "model": "fraud"})
    assert _value(m, "inferline_requests_total", tenant="demo", model="fraud") == 40
    assert [e["event"] for e in logs] == ["metrics.observe_failed"]


def test_buckets_have_edges_at_the_slo_thresholds() -> None:
    assert 0.025 in LATENCY_BUCKETS and 0.05 in LATENCY_BUCKETS
    assert LATENCY_BUCKETS[0] == 0.0005 and list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


def test_unknown_tenants_models_and_stages_collapse_to_other() -> None:
    m = _metrics()
    for tenant in ("mallory", "eve", "trudy"):
        m.observe_rpc(PREDICT, "PERMISSION_DENIED", 0.001, {"tenant": tenant, "model": "x"})
    m.observe_rpc(PREDICT, "OK", 0.001, {"tenant": "demo", "stages_us": {"warp_drive": 5}})
    tenants = {s.labels["tenant"] for s in _samples(m) if s.name == "inferline_requests_total"}
    assert tenants == {OTHER, "demo"}
    assert _value(m, "inferline_requests_total", tenant=OTHER, model=OTHER, version="none") == 3
    stages = {s.labels["stage"] for s in _samples(m) if "stage" in s.labels}
    assert stages == {OTHER}


def test_label_cap_bounds_series_even_for_known_values() -> None:
    """A routing table with 500 tenants yields at most ``caps.tenants`` tenant series."""
    tenants = {f"t{i}" for i in range(500)}
    m = _metrics(tenants, Caps(tenants=10, arms=2, versions=3))
    for i in range(500):
        m.observe_rpc(PREDICT, "OK", 0.001, {"tenant": f"t{i}", "model": "fraud",
                                             "version": i % 7, "arm": f"arm{i % 5}"})  # fmt: skip
    reqs = [s for s in _samples(m) if s.name == "inferline_requests_total"]
    assert len({s.labels["tenant"] for s in reqs}) == 11  # 10 kept + other
    assert sum(s.value for s in reqs if s.labels["tenant"] == OTHER) == 490
    assert {s.labels["arm"] for s in reqs} == {"arm0", "arm1", OTHER}
    assert {s.labels["version"] for s in reqs} == {"0", "1", "2", OTHER}
    assert sum(s.value for s in reqs) == 500  # nothing lost, only aggregated


def test_label_bound_keeps_first_values_and_respects_allowed_set() -> None:
    bound = LabelBound(2)
    assert [bound(v) for v in ("a", "b", "c", "a", None, "")] == ["a", "b", OTHER, "a", "none",
                                                                   "none"]  # fmt: skip
    # A value seen earlier but removed from the routing table is "other" now.
    assert bound("a", frozenset({"b"})) == OTHER and bound("b", frozenset({"b"})) == "b"


def test_sync_copies_totals_as_counter_increments() -> None:
    m = _metrics()
    shed = {("overload", "batch"): 3, ("tenant_concurrency", "standard"): 0}
    m.sync_gauges(inflight=7, breakers={"triton:a": "open", "feast": "closed"}, shed=shed,
                  caches=[("score", 10, 4)])  # fmt: skip
    assert _value(m, "inferline_inflight_requests") == 7
    assert _value(m, "inferline_breaker_open", breaker="triton:a") == 1
    assert _value(m, "inferline_breaker_open", breaker="feast") == 0
    # Zero counts are exported as 0 (so increase() sees the first real one).
    assert any(
        s.name == "inferline_shed_total" and s.labels["reason"] == "tenant_concurrency"
        for s in _samples(m)
    )
    shed[("overload", "batch")] = 5
    m.sync_gauges(inflight=0, breakers={}, shed=shed, caches=[("score", 12, 4)])
    assert _value(m, "inferline_shed_total", reason="overload", priority="batch") == 5
    assert _value(m, "inferline_cache_lookups_total", cache="score", result="hit") == 12
    # The source reset (e.g. a cache rebuilt): its new total counts, nothing is lost.
    m.sync_gauges(inflight=0, breakers={}, shed=shed, caches=[("score", 2, 4)])
    assert _value(m, "inferline_cache_lookups_total", cache="score", result="hit") == 14


def test_drift_gauges_follow_the_monitor_and_drop_retired_versions() -> None:
    m = _metrics()

    def sync(drift: dict[tuple[str, int], dict[str, float]]) -> None:
        m.sync_gauges(inflight=0, breakers={}, shed={}, caches=[], drift=drift)

    sync({("fraud", 1): {"amount": 0.3, "__score__": 0.05}, ("ghost", 1): {"a": 9.0}})
    assert _value(m, "inferline_drift_psi", model="fraud", version="1", feature="amount") == 0.3
    assert not any(s.labels.get("model") in ("ghost", OTHER) for s in _samples(m))
    sync({("fraud", 2): {"amount": 0.01}})
    versions = {s.labels["version"] for s in _samples(m) if s.name == "inferline_drift_psi"}
    assert versions == {"2"}


def test_http_helper_serves_the_registry_on_a_free_port() -> None:
    m = _metrics()
    m.observe_rpc(PREDICT, "OK", 0.001, {"tenant": "demo", "model": "fraud", "version": 1})
    endpoint = start_http_server(m, "127.0.0.1", 0)
    try:
        assert endpoint.port > 0
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
        assert 'inferline_requests_total{arm="none",code="OK"' in body
        assert "python_gc_objects_collected_total" not in body  # not the global registry
    finally:
        endpoint.close()


@pytest.mark.parametrize("degraded", [False, True])
def test_degraded_flag_and_reasonless_degraded_answers(degraded: bool) -> None:
    m = _metrics()
    m.observe_request(method="Predict", code="OK", duration_s=0.001, tenant="demo",
                      model="fraud", version=1, degraded=degraded)  # fmt: skip
    assert _value(m, "inferline_requests_total", degraded=str(degraded).lower()) == 1
    assert _value(m, "inferline_degraded_total", reason="unknown") == (1 if degraded else 0)


def test_values_stay_in_process_when_multiprocess_mode_is_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing feast switches prometheus_client to mmap-backed multiprocess values
    (it sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported). The
    router's metrics must not follow: slower, files in /tmp, and two Metrics
    objects would count into each other."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(prom_values, "ValueClass", prom_values.MultiProcessValue())
    first, second = _metrics(), _metrics()
    for m in (first, second):
        m.observe_request(method="Predict", code="OK", duration_s=0.001, tenant="demo",
                          model="fraud", version=1, stages_us={"total": 900})  # fmt: skip
        m.sync_gauges(inflight=3, breakers={"feast": "open"}, shed={("overload", "batch"): 1},
                      caches=[], drift={("fraud", 1): {"amount": 0.2}})  # fmt: skip
    assert _value(second, "inferline_requests_total", code="OK") == 1
    assert _value(second, "inferline_shed_total", reason="overload") == 1
    assert _value(second, "inferline_stage_duration_seconds_count", stage="total") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_table_reload_relabels_repeated_request_shapes() -> None:
    """Resolved labels are reused per request shape, but a reload (new known sets)
    must take effect at once: a tenant dropped from the table becomes ``other``."""
    known = [(frozenset({"demo", "payments"}), frozenset({"fraud"}))]
    m = Metrics(lambda: known[0])
    ctx = {"tenant": "payments", "model": "fraud", "version": 2, "stages_us": {"total": 10}}
    for _ in range(3):
        m.observe_rpc(PREDICT, "OK", 0.001, ctx)
    known[0] = (frozenset({"demo"}), frozenset({"fraud"}))
    m.observe_rpc(PREDICT, "OK", 0.001, ctx)
    assert _value(m, "inferline_requests_total", tenant="payments", model="fraud") == 3
    assert _value(m, "inferline_requests_total", tenant=OTHER, model="fraud") == 1
    assert _value(m, "inferline_stage_duration_seconds_count", stage="total", model="fraud") == 4


def test_lock_free_series_expose_what_prometheus_client_would() -> None:
    """The hot series' lean inc/observe (no lock, bucket found by bisection) give
    the exposition prometheus_client's own Histogram and Counter give, for values
    on, between and beyond the bucket edges."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    m = _metrics()
    ref = CollectorRegistry()
    hist = Histogram("ref_seconds", "", ["stage"], buckets=LATENCY_BUCKETS, registry=ref)
    count = Counter("ref", "", ["view"], registry=ref)
    values = [0.0, 1e-5, *LATENCY_BUCKETS, 0.0012, 0.3, 7.0, 1e9, -1.0]
    for v in values:
        m._child(m.stages, "total", "fraud").observe(v)
        hist.labels("total").observe(v)
        m._child(m.freshness, "accounts", "FRESH").inc(2)
        count.labels("accounts").inc(2)
    ours = {
        (
            s.name.replace("inferline_stage_duration_seconds", "ref_seconds"),
            s.labels.get("le"),
        ): s.value
        for s in _samples(m)
        if s.name.startswith("inferline_stage_duration_seconds") and "created" not in s.name
    }
    theirs = {
        (s.name, s.labels.get("le")): s.value
        for f in text_string_to_metric_families(generate_latest(ref).decode())
        for s in f.samples
        if s.name.startswith("ref_seconds") and "created" not in s.name
    }
    assert ours == theirs and ours[("ref_seconds_count", None)] == len(values)
    assert _value(m, "inferline_feature_freshness_total", view="accounts") == 2 * len(values)
    with pytest.raises(ValueError):
        m._child(m.freshness, "accounts", "FRESH").inc(-1)


def test_rpcs_are_folded_in_batches_and_before_every_collection() -> None:
    """observe_rpc buffers; every 32nd RPC folds the batch into the series, and
    any collection (a scrape) folds what is waiting first."""
    m = _metrics()
    ctx = {"tenant": "demo", "model": "fraud", "version": 2, "stages_us": {"total": 10}}
    child = m._child(m.requests, "Predict", "demo", "fraud", "2", "none", "OK", "false")
    for _ in range(31):
        m.observe_rpc(PREDICT, "OK", 0.001, ctx)
    assert child._value.get() == 0 and len(m._pending) == 31
    m.observe_rpc(PREDICT, "OK", 0.001, ctx)
    assert child._value.get() == 32 and m._pending == []
    m.observe_rpc(PREDICT, "OK", 0.001, ctx)
    assert _value(m, "inferline_requests_total", tenant="demo", code="OK") == 33
    assert _value(m, "inferline_stage_duration_seconds_count", stage="total") == 33
