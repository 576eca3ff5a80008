from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import generate_latest

from router.observability.metrics import Metrics
from router.observability.slo import main, render, report


def _scrape() -> str:
    m = Metrics(lambda: (frozenset({"demo"}), frozenset({"fraud"})))
    ctx = {"tenant": "demo", "model": "fraud", "version": 1}
    for _ in range(9_000):  # fast OK
        m.observe_rpc("/inferline.v1.InferenceService/Predict", "OK", 0.004, ctx)
    for _ in range(980):  # slow OK (dings latency only)
        m.observe_rpc("/inferline.v1.InferenceService/Predict", "OK", 0.040, ctx)
    for _ in range(10):  # degraded OK (dings the degraded SLI only)
        m.observe_rpc(
            "/inferline.v1.InferenceService/Predict",
            "OK",
            0.004,
            {**ctx, "degraded": True, "degraded_reasons": ["features_stale"]},
        )
    for _ in range(5):  # failures
        m.observe_rpc("/inferline.v1.InferenceService/Predict", "UNAVAILABLE", 0.010, ctx)
    for _ in range(500):  # caller errors: not valid requests
        m.observe_rpc("/inferline.v1.InferenceService/Predict", "INVALID_ARGUMENT", 0.001, ctx)
    return generate_latest(m.registry).decode()


def test_disjoint_slis_and_budget() -> None:
    r = report(_scrape(), availability_slo=0.999, latency_slo=0.95, threshold_s=0.025)
    assert (r.valid, r.ok, r.failed) == (9_995, 9_990, 5)
    assert r.availability == pytest.approx(9_990 / 9_995)
    assert r.latency == pytest.approx(9_010 / 9_990)  # the slow 980 only
    assert r.degraded_ratio == pytest.approx(10 / 9_990)
    assert r.budget_remaining == pytest.approx(1 - 5 / 9.995)
    text = render(r)
    assert "availability       99.94997%" in text and "BREACHED" in text  # latency 90% < 95%


def test_cli_reads_a_file(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "scrape.txt"
    path.write_text(_scrape())
    assert main(["--file", str(path), "--slo", "0.999"]) == 0
    assert "error budget left  50.0%" in capsys.readouterr().out


def _metrics() -> Metrics:
    return Metrics(lambda: (frozenset({"demo"}), frozenset({"fraud"})))


def _sync_shed(m: Metrics, tenant_quota: int, overload: int) -> None:
    shed = {("tenant_concurrency", "standard"): tenant_quota, ("overload", "batch"): overload}
    m.sync_gauges(inflight=0, breakers={}, shed=shed, caches=[])


def test_quota_rejections_and_health_checks_are_not_valid_requests() -> None:
    m = _metrics()
    ctx = {"tenant": "demo", "model": "fraud", "version": 1}
    for _ in range(1000):
        m.observe_rpc("/inferline.v1.InferenceService/Predict", "OK", 0.004, ctx)
        m.observe_rpc("/grpc.health.v1.Health/Check", "OK", 0.0001, {})
    for _ in range(30):  # 20 of them a tenant over its own cap, 10 overload shedding
        m.observe_rpc("/inferline.v1.InferenceService/Predict", "RESOURCE_EXHAUSTED", 0.0001, ctx)
    for _ in range(5):  # KServe passthrough counts as inference
        m.observe_rpc("/inference.GRPCInferenceService/ModelInfer", "UNAVAILABLE", 0.01, ctx)
    _sync_shed(m, tenant_quota=20, overload=10)
    r = report(m.render().decode(), availability_slo=0.999, latency_slo=0.95, threshold_s=0.025)
    assert (r.valid, r.ok, r.failed, r.counts.quota_rejected) == (1015, 1000, 15, 20)
    assert r.latency == 1.0  # the health checks' fast answers are not in it either


def test_baseline_gives_the_window_between_scrapes_across_a_restart() -> None:
    ctx = {"tenant": "demo", "model": "fraud", "version": 1}
    before = _metrics()
    for _ in range(5000):
        before.observe_rpc("/x/Predict", "OK", 0.004, ctx)
    for _ in range(50):
        before.observe_rpc("/x/Predict", "INTERNAL", 0.004, ctx)
    first = before.render().decode()
    for _ in range(1000):
        before.observe_rpc("/x/Predict", "OK", 0.004, ctx)
    r = report(before.render().decode(), availability_slo=0.999, latency_slo=0.95,
               threshold_s=0.025, baseline=first)  # fmt: skip
    assert (r.valid, r.failed, r.budget_remaining) == (1000, 0, 1.0)
    restarted = _metrics()  # counters back at zero: the window is what it has now
    for _ in range(99):
        restarted.observe_rpc("/x/Predict", "OK", 0.004, ctx)
    restarted.observe_rpc("/x/Predict", "UNAVAILABLE", 0.004, ctx)
    r = report(restarted.render().decode(), availability_slo=0.999, latency_slo=0.95,
               threshold_s=0.025, baseline=first)  # fmt: skip
    assert (r.valid, r.failed) == (100, 1)
    assert r.budget_remaining == pytest.approx(1 - 1 / 0.1)  # 10x overspent


def test_a_reset_moves_every_count_to_the_new_window_together() -> None:
    """After a restart some counters may still read higher than the baseline
    (more traffic since) while others read lower: all restart together."""
    from router.observability.slo import Counts

    baseline = Counts(valid=1000, ok=900, ok_fast=900)
    assert Counts(valid=950, ok=950, ok_fast=950) - baseline == Counts(950, 950, 950)
    # No counter went down, but a reset hides in a sum of routers: 300 OK of 200.
    assert Counts(valid=1200, ok=1200, ok_fast=1200) - baseline == Counts(1200, 1200, 1200)
    assert Counts(valid=1100, ok=990, ok_fast=980) - baseline == Counts(100, 90, 80)


def test_per_sli_budgets() -> None:
    r = report(_scrape(), availability_slo=0.999, latency_slo=0.95, threshold_s=0.025)
    # 980 slow of 9,990 OK against 5% allowed (499.5): overspent ~1.96x.
    assert r.latency_budget_remaining == pytest.approx(1 - 980 / (0.05 * 9_990))
    assert r.degraded_budget_remaining == pytest.approx(1 - 10 / (0.01 * 9_990))
    assert "degraded answers   0.10010%  of OK, objective <= 1.0%  ok" in render(r)


def test_cli_exit_codes_and_http(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from router.observability.metrics import start_http_server

    m = _metrics()
    for code in ["OK"] * 99 + ["UNAVAILABLE"]:
        m.observe_rpc("/x/Predict", code, 0.004, {"tenant": "demo", "model": "fraud"})
    endpoint = start_http_server(m, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        assert main(["--url", url]) == 1  # 1% failed against a 0.1% budget
        assert "error budget left  -900.0%" in capsys.readouterr().out
        assert main(["--url", url, "--slo", "0.98"]) == 0
        assert main(["--url", url, "--threshold", "0.02"]) == 2  # not a bucket edge
        assert "not a bucket edge" in capsys.readouterr().err
    finally:
        endpoint.close()
    assert main(["--file", str(tmp_path / "missing.txt")]) == 2


def test_module_entry_point(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "scrape.txt"
    path.write_text(_scrape())
    done = subprocess.run(
        [sys.executable, "-m", "router.observability.slo", "--file", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "availability       99.94997%  target 99.900%  ok" in done.stdout
