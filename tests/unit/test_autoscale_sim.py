"""The autoscaling simulation: its trace, the HPA rules it applies, and what it shows."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from scripts import autoscale_sim as sim
from scripts import capacity

DOC = capacity.DEFAULT_INPUTS.parent / "capacity.md"


def linear(u: float) -> float:
    return u


def policy(**changes: object) -> sim.Policy:
    """One-pod-per-100-rps tier whose metric is its utilization (target 0.5)."""
    base = sim.Policy(
        name="t",
        capacity_rps=100.0,
        metric=linear,
        target=0.5,
        metric_cap=1.5,
        min_replicas=1,
        max_replicas=50,
        metric_window_s=15,
        metric_delay_s=0,
        start_s=20,
        warmup_s=10,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def constant(rps: float, seconds: int, cls: str = "standard") -> sim.Trace:
    return sim.Trace(np.full((seconds, 1), rps), np.array([1.0]), (cls,))


def test_trace_is_seeded_skewed_and_spiky() -> None:
    spec = sim.TraceSpec()
    a, b = sim.make_trace(spec), sim.make_trace(spec)
    assert np.array_equal(a.by_tenant, b.by_tenant)
    assert not np.array_equal(a.by_tenant, sim.make_trace(replace(spec, seed=8)).by_tenant)
    assert a.shares[0] == pytest.approx(capacity.zipf_top_share(spec.tenants, spec.zipf_s))
    before = a.total[: spec.spike_at_s].mean()
    hold = a.total[
        spec.spike_at_s + spec.spike_ramp_s : spec.spike_at_s
        + spec.spike_ramp_s
        + spec.spike_hold_s
    ].mean()
    assert before == pytest.approx(spec.base_rps, rel=0.06)  # Poisson + bursts
    assert hold / before == pytest.approx(3.0, rel=0.06)
    assert a.classes[1] == "critical" and a.classes[0] == "standard"
    assert a.classes[spec.batch_from_rank - 1 :] == ("batch",) * (spec.tenants - 15)


def test_spike_envelope() -> None:
    spec = sim.TraceSpec(duration_s=100, spike_at_s=10, spike_ramp_s=10, spike_hold_s=20)
    env = sim.envelope(spec)
    assert env[5] == 1.0
    assert env[15] == pytest.approx(2.0)  # halfway up the ramp to 3x
    assert env[25] == env[39] == 3.0
    assert env[45] == pytest.approx(2.0)
    assert env[60] == 1.0


def test_hpa_rule() -> None:
    p = policy()
    assert sim.hpa_desired(p, 4, 4 * 0.54) == 4  # within the 10% tolerance
    assert sim.hpa_desired(p, 4, 4 * 1.0) == 8  # ceil(4 x 1.0 / 0.5)
    assert sim.hpa_desired(p, 8, 4 * 1.0) == 8  # 4 starting pods count as 0
    assert sim.hpa_desired(p, 10, 10 * 0.25) == 5


def test_admission_sheds_lower_classes_first() -> None:
    p = policy(max_in_flight_util={"critical": 1.0, "standard": 0.8, "batch": 0.5})
    served = sim._admit(p, {"critical": 10, "standard": 50, "batch": 50}, cap=100)
    assert served == {"critical": 10, "standard": 50, "batch": 0}
    served = sim._admit(p, {"critical": 90, "standard": 50, "batch": 50}, cap=100)
    assert served == {"critical": 90, "standard": 0, "batch": 0}


def test_overload_sheds_exactly_the_excess() -> None:
    r = sim.simulate(constant(250, 100), policy(min_replicas=2, max_replicas=2))
    assert r.offered == 25_000
    assert r.shed == 5_000  # 2 pods x 100 rps served, 50 rps shed for 100 s
    assert r.peak_utilization == 1.25 and r.min_headroom == pytest.approx(-0.2)
    assert r.shed_by_class["standard"] == pytest.approx(0.2)


def test_scale_up_waits_for_sync_start_and_warmup() -> None:
    trace = sim.Trace(
        np.concatenate([np.full((60, 1), 40.0), np.full((120, 1), 180.0)]),
        np.array([1.0]),
        ("standard",),
    )
    r = sim.simulate(trace, policy())
    assert r.pods_start == 1  # 40 rps at a 60% target
    # The jump lands at t=60; the t=60 sync still averages mostly old samples; the
    # t=75 sync reads 0.99 (one pod, saturated) -> ceil(1 x 0.99 / 0.5) = 2 pods, which
    # turns ready at 75 + 20 + 10 = 105. Until then one pod serves 100 of 180 rps.
    assert list(r.replicas[74:77]) == [1, 1, 2]
    assert r.utilization[104] == pytest.approx(1.8)
    assert r.utilization[105] == pytest.approx(0.9)
    assert r.shed == 80 * 45
    assert r.pods_peak == 4  # t=120 reads 0.9 per pod on 2 pods -> ceil(2 x 1.8) = 4
    # Without warmup, the pod serves from t=95 but cold, at half capacity, for 30 s.
    cold = sim.simulate(trace, policy(warmup=False))
    assert cold.shed == 80 * 35 + 30 * 30
    assert cold.cold_served > 0 and r.cold_served == 0


def test_scale_down_waits_for_the_stabilization_window() -> None:
    trace = sim.Trace(
        np.concatenate([np.full((60, 1), 400.0), np.full((600, 1), 50.0)]),
        np.array([1.0]),
        ("standard",),
    )
    r = sim.simulate(trace, policy(min_replicas=1))
    assert r.replicas[59] == 8  # 400 rps at 50%
    assert r.replicas[60 + 290] == 8  # still within 300 s of the last high reading
    assert r.replicas[-1] < 8


@cache
def _results() -> dict[str, sim.Result]:
    inputs = capacity.Inputs.load()
    return {s.label: sim.simulate(sim.make_trace(s.spec), s.policy) for s in sim.scenarios(inputs)}


def _find(prefix: str) -> sim.Result:
    (result,) = [r for label, r in _results().items() if label.startswith(prefix)]
    return result


def _find_tag(tag: str, tier: str) -> sim.Result:
    (result,) = [r for label, r in _results().items() if label.startswith(tier) and tag in label]
    return result


def test_what_the_scenarios_show() -> None:
    chart = _find("router 2k: chart policy")
    assert 0 < chart.shed_fraction < 0.05
    assert chart.shed_by_class["critical"] == 0.0
    assert chart.shed_by_class["batch"] > chart.shed_by_class["standard"] > 0
    prewarmed = _find_tag("(pre-warmed for the spike)", "router")
    assert prewarmed.shed == 0 and prewarmed.pod_seconds > chart.pod_seconds
    unclamped = _find("router 2k: in-flight not clamped")
    assert unclamped.pods_peak >= 3 * chart.pods_peak
    assert unclamped.pod_seconds > 2.5 * chart.pod_seconds
    assert _find("router 2k: 60 s scale-up").shed > 2 * chart.shed
    triton = _find("triton-cpu 7k: chart policy")
    inputs = capacity.Inputs.load()
    spike = capacity.plan_region(inputs, 10_000).tier("triton-cpu").spike
    if spike > sim.triton_policy(inputs).min_replicas:
        assert _find(f"triton-cpu 7k: min {spike}").shed < triton.shed / 10
    else:  # the floor holds the spike: a sliver is shed while the HPA reacts
        assert not [label for label in _results() if label.startswith("triton-cpu 7k: min ")]
        assert triton.shed_fraction < 0.005
    no_warmup = _find("triton-cpu 7k: no model warmup")
    assert no_warmup.cold_served > 100_000 and triton.cold_served == 0


def test_router_policy_uses_the_chart_numbers() -> None:
    inputs = capacity.Inputs.load()
    p = sim.router_policy(inputs)
    hpa = capacity.hpa_values(inputs)["router"]
    assert (p.min_replicas, p.max_replicas) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert f"{round(p.target * 1000)}m" == hpa["targetInflightPerPod"]
    assert p.metric_cap == pytest.approx(3 * p.target)
    # Admission shares: batch is shed at a lower utilization than standard, critical last.
    u = p.max_in_flight_util
    assert u["batch"] < u["standard"] < u["critical"] < 1.0
    assert capacity.router_inflight(inputs, u["critical"]) == pytest.approx(
        hpa["maxInFlight"], rel=1e-3
    )


def test_doc_table_equals_the_simulation(tmp_path: Path) -> None:
    assert sim.main(["--check", str(DOC)]) == 0
    stale = tmp_path / "capacity.md"
    stale.write_text(DOC.read_text().replace("| router 2k: chart policy", "| router 2k: old", 1))
    assert sim.main(["--check", str(stale)]) == 1
