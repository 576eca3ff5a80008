from __future__ import annotations

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
