"""Canary criteria on per-arm windows: rollback rules, the KPI/p99 policy, promotion."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from router.errors import Code, InvalidArgument
from router.observability.release import ReleaseMetrics
from router.pipeline.arms import ArmStats, ArmWindow
from router.registry.canary import CanaryPolicy, evaluate, score_psi

POLICY = CanaryPolicy(
    min_samples=100,
    p99_ratio=1.25,
    p99_slack_ms=3.0,
    p99_slo_ms=50.0,
    min_outcomes=50,
    min_kpi_lift=0.01,
)
rng = np.random.default_rng(7)


def window(
    n: int = 500,
    latency_ms: float = 5.0,
    error_rate: float = 0.0,
    score_mu: float = 0.2,
    kpi: float | None = None,
) -> ArmWindow:
    w = ArmWindow(2000)
    for _ in range(n):
        ok = rng.random() >= error_rate
        w.add(latency_ms / 1e3 * (1 + 0.1 * rng.random()), ok, float(rng.normal(score_mu, 0.05)))
    if kpi is not None:
        w.outcomes, w.outcome_sum, w.outcome_score_sum = 100, 100 * kpi, 100 * score_mu
    return w


@pytest.mark.parametrize(
    "override",
    [
        {"ramp": [0.25, 1.5]},  # the registry refuses a weight of 1.5: the canary would stall
        {"ramp": [0.0]},
        {"p99_ratio": float("nan")},  # NaN compares false: never a rollback
        {"min_kpi_lift": float("nan")},
        {"max_score_psi": float("inf")},
    ],
)
def test_policies_that_would_disarm_the_controller_are_refused(
    override: dict[str, object],
) -> None:
    with pytest.raises(ValidationError):
        CanaryPolicy.model_validate(override)
    assert CanaryPolicy.model_validate({"ramp": [0.05, 0.25, 0.5]}).ramp == (0.05, 0.25, 0.5)


def test_waits_for_samples() -> None:
    assert evaluate(POLICY, window(50), window(500)).action == "wait"


def test_healthy_canary() -> None:
    v = evaluate(POLICY, window(), window())
    assert (v.action, v.reasons) == ("healthy", ())
    assert v.figures["p99_ms_canary"] > 0


def test_error_rate_rolls_back() -> None:
    v = evaluate(POLICY, window(), window(error_rate=0.05))
    assert v.action == "rollback" and v.reasons[0].startswith("error rate")


def test_latency_regression_rolls_back() -> None:
    v = evaluate(POLICY, window(latency_ms=5), window(latency_ms=12))
    assert v.action == "rollback" and v.reasons[0].startswith("p99")


def test_small_latency_noise_is_tolerated() -> None:
    # +2 ms on a 5 ms p99 is within the absolute slack.
    assert evaluate(POLICY, window(latency_ms=5), window(latency_ms=6.5)).action == "healthy"


def test_score_shift_rolls_back() -> None:
    v = evaluate(POLICY, window(), window(score_mu=0.5))
    assert v.action == "rollback" and "PSI" in v.reasons[0]
    assert score_psi(np.array([0.1, 0.2]), np.array([])) == 0.0


def test_kpi_lift_excuses_p99_regression_only_within_slo() -> None:
    control = window(latency_ms=5, kpi=0.10)
    better_slower = window(latency_ms=12, kpi=0.15)
    v = evaluate(POLICY, control, better_slower)
    assert v.action == "healthy" and "KPI lift" in v.reasons[0]
    # Same lift, but p99 beyond the SLO budget: latency wins, roll back.
    assert evaluate(POLICY, control, window(latency_ms=60, kpi=0.15)).action == "rollback"
    # No lift: the regression rolls back.
    assert evaluate(POLICY, control, window(latency_ms=12, kpi=0.10)).action == "rollback"


def test_outcome_join_by_request_id() -> None:
    stats = ArmStats(window=100, join_entries=2)
    stats.observe("r1", "fraud", "control", 1, 0.005, True, [0.2])
    stats.observe("r2", "fraud", "canary", 2, 0.005, True, [0.4])
    stats.observe("r3", "fraud", "canary", 2, 0.005, True, [0.6])  # evicts r1 (bound 2)
    joined, unknown = stats.join([("r1", 1.0), ("r2", 1.0), ("r3", 0.0), ("zz", 1.0)])
    assert [(j.request_id, j.arm, j.version) for j in joined] == [
        ("r2", "canary", 2),
        ("r3", "canary", 2),
    ]
    assert unknown == 2
    w = stats.window("fraud", "canary")
    assert (w.outcomes, w.kpi()) == (2, 0.5)
    assert abs((w.calibration_gap() or 0) - 0.0) < 1e-9  # mean score 0.5 vs mean outcome 0.5


def test_a_non_finite_outcome_refuses_the_batch_and_joins_nothing() -> None:
    stats = ArmStats(window=100, join_entries=10)
    stats.observe("r1", "fraud", "canary", 2, 0.005, True, [0.4])
    stats.observe("r2", "fraud", "canary", 2, 0.005, True, [0.6])
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InvalidArgument) as exc:
            stats.join([("r1", 1.0), ("r2", bad)])
        assert exc.value.code is Code.INVALID_ARGUMENT
        assert exc.value.public_message == "outcome 1 has a non-finite value"
    assert stats.window("fraud", "canary").outcomes == 0
    joined, unknown = stats.join([("r1", 1.0), ("r2", 0.0)])  # both still joinable
    assert (len(joined), unknown) == (2, 0)
    assert stats.window("fraud", "canary").kpi() == 0.5


def test_release_metrics_per_arm_and_shadow() -> None:
    registry = CollectorRegistry()
    metrics = ReleaseMetrics(registry)
    stats = ArmStats(window=100, join_entries=10, on_observe=metrics.on_arm)
    stats.observe("r1", "fraud", "control", 1, 0.004, True, [0.2, 0.4])
    stats.observe("r2", "fraud", "canary", 2, 0.009, False, [])
    metrics.on_shadow("fraud", 2, "ok", 0.003, 0.05)
    metrics.on_shadow("fraud", 2, "dropped", 0.0, 0.0)
    metrics.sync(stats)
    text = generate_latest(registry).decode()
    assert 'inferline_arm_answers_total{arm="control",model="fraud",result="ok"} 1.0' in text
    assert 'inferline_arm_answers_total{arm="canary",model="fraud",result="error"} 1.0' in text
    assert 'inferline_arm_score_sum{arm="control",model="fraud"} 0.3' in text
    assert 'inferline_arm_window_error_ratio{arm="canary",model="fraud"} 1.0' in text
    assert 'inferline_arm_window_score_mean{arm="control",model="fraud"} 0.3' in text
    assert 'inferline_shadow_requests_total{model="fraud",result="dropped",version="2"} 1.0' in text
    assert 'inferline_shadow_score_abs_diff_count{model="fraud",version="2"} 1.0' in text


def test_a_reset_forgets_the_requests_awaiting_outcomes_too() -> None:
    """A late outcome for the rolled-back canary's traffic must not count toward
    the next canary's KPI (it could excuse the next one's p99 regression)."""
    stats = ArmStats(window=100, join_entries=10)
    stats.observe("old", "fraud", "canary", 3, 0.005, True, [0.4])
    stats.observe("other", "ranker", "canary", 7, 0.005, True, [0.4])
    stats.reset("fraud")  # the v3 canary ended; v4 starts from zero
    stats.observe("new", "fraud", "canary", 4, 0.005, True, [0.6])
    joined, unknown = stats.join([("old", 1.0), ("new", 0.0), ("other", 1.0)])
    assert [(j.request_id, j.version) for j in joined] == [("new", 4), ("other", 7)]
    assert unknown == 1
    assert stats.window("fraud", "canary").outcomes == 1


def test_outcomes_join_only_for_the_models_given() -> None:
    stats = ArmStats(window=100, join_entries=10)
    stats.observe("f", "fraud", "canary", 2, 0.005, True, [0.4])
    stats.observe("r", "ranker", "canary", 7, 0.005, True, [0.4])
    joined, unknown = stats.join([("f", 1.0), ("r", 1.0)], models=("ranker",))
    assert [j.request_id for j in joined] == ["r"] and unknown == 1
    joined, unknown = stats.join([("f", 1.0)], models=("fraud",))  # still joinable
    assert [j.request_id for j in joined] == ["f"] and unknown == 0
