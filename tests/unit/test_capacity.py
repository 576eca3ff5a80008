"""Capacity model arithmetic on small figures worked by hand; docs/capacity.md in sync."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from scripts import capacity

DOC = capacity.DEFAULT_INPUTS.parent / "capacity.md"


def _fig(value: Any) -> dict[str, Any]:
    return {"value": value, "source": "test"}


def synthetic(**overrides: Any) -> capacity.Inputs:
    """Round numbers: a router pod serves 1000 rps, a Triton core 2000, a GPU 10000."""
    measurements = {
        "router_cpu_ms_per_request_redis_c1": 1.0,
        "router_rps_per_core_pair_c16": 5000,
        "router_latency_p50_ms_open_loop": 2.0,
        "triton_gbdt_cpu_ms_per_request_c1": 0.5,
        "triton_gbdt_cpu_ms_per_request_c16": 0.25,
        "gpu_mlp_rps_4_instances_p99_10ms": 10_000,
        "redis_server_cpu_us_per_hmget_depth1": 20.0,
        "redis_server_cpu_us_per_hmget_depth16": 5.0,
        "redis_server_cpu_us_per_quota_eval": 25.0,
    }
    assumptions = {
        "regional_rps": [1000, 6000],
        "spike_factor": 3,
        "cpu_model_share": 0.5,
        "target_utilization": 0.5,
        "ceiling_utilization": 0.75,
        "zones": 3,
        "router_pod_cores": 1,
        "triton_cpu_pod_cores": 2,
        "gpu_pod_cores": 4,
        "redis_node_cores": 1,
        "ranking_mean_candidates": 5,
        "in_cluster_hop_ms": 0.5,
        "hops_inside_router": 2,
        "core_hour_usd": 0.05,
        "gpu_hour_usd": 2.0,
        "tenants": 2,
        "tenant_zipf_s": 1.0,
        "gpu_quota_per_region": 10,
        "latency_budget_p99_ms": 50,
    }
    for key, value in overrides.items():
        (measurements if key in measurements else assumptions)[key] = value
    return capacity.Inputs(
        {
            "measurements": {k: _fig(v) for k, v in measurements.items()},
            "assumptions": {k: _fig(v) for k, v in assumptions.items()},
        }
    )


def test_every_figure_needs_a_source() -> None:
    raw = copy.deepcopy(synthetic().raw)
    raw["measurements"]["router_cpu_ms_per_request_redis_c1"]["source"] = ""
    with pytest.raises(ValueError, match="needs a value and a source"):
        capacity.Inputs(raw)


def test_per_unit_capacity() -> None:
    inputs = synthetic()
    assert capacity.router_capacity_rps(inputs) == 1000.0  # min(1000 / 1.0 ms, 5000)
    assert capacity.router_capacity_rps(synthetic(router_rps_per_core_pair_c16=800)) == 800
    assert capacity.triton_cpu_capacity_rps(inputs) == 2000.0
    assert capacity.triton_cpu_capacity_rps(inputs, batched=True) == 4000.0
    # fraud: one HMGET (20); ranking: user (20) + item pipeline 20 + 4 x 5 = 60; half each.
    assert capacity.redis_us_per_request(inputs) == pytest.approx(0.5 * 20 + 0.5 * 60)


def test_tier_sizing_rules() -> None:
    inputs = synthetic()
    # 1000 rps on 1000-rps pods: steady 1000/(1000*0.5) = 2; at the 0.75 ceiling 2 pods,
    # so a zone loss needs 2 * 3/2 = 3; a 3x spike needs 3000/750 = 4 and, with a zone
    # down, 4 * 3/2 = 6; the floor is also at least one pod per zone.
    tier = capacity.size_tier(inputs, "router", "pod", 1000, 1000, cores=1)
    assert (tier.steady, tier.zone, tier.spike, tier.floor, tier.ceiling) == (2, 3, 4, 3, 6)
    assert tier.steady_utilization == pytest.approx(1000 / 3000)
    assert tier.spike_utilization == pytest.approx(1.0)
    # Replicated (Redis): a zone loss promotes replicas, the shard count holds.
    shards = capacity.size_tier(inputs, "redis", "shard", 1000, 1000, cores=2, replicated=True)
    assert (shards.zone, shards.ceiling) == (2, 4)
    # Exact multiples do not round up a unit (float noise).
    assert capacity.size_tier(inputs, "x", "pod", 1500, 1000, cores=1).steady == 3


def test_inflight_target_and_admission_limit() -> None:
    inputs = synthetic()
    # At 50%: 500 rps x (1 ms / (1 - 0.5) + (2.0 - 1.0) ms + 2 x 0.5 ms) = 500 x 4 ms = 2.0
    assert capacity.router_inflight_target(inputs) == pytest.approx(2.0)
    assert capacity.router_inflight(inputs, 0.0) == 0.0
    assert capacity.router_inflight(inputs, 0.9) > capacity.router_inflight(inputs, 0.5)
    assert capacity.router_max_in_flight(inputs) == 50  # 1000 rps x 50 ms


def test_region_plan_and_cost() -> None:
    inputs = synthetic()
    plan = capacity.plan_region(inputs, 1000)
    router, cpu, gpu, redis = (
        plan.tier(n) for n in ("router", "triton-cpu", "triton-gpu", "redis")
    )
    assert (router.floor, router.ceiling) == (3, 6)
    assert cpu.capacity_rps == 4000 and cpu.load_rps == 500
    assert (cpu.floor, gpu.floor, redis.floor) == (3, 2, 3)
    hourly = 3 * 1 * 0.05 + 3 * 2 * 0.05 + 2 * (4 * 0.05 + 2.0) + 3 * 2 * 0.05
    assert plan.cost_per_hour_usd == pytest.approx(hourly)
    assert plan.cost_per_1k_usd == pytest.approx(hourly / 3600)  # 1000 rps = 3600k/hour


def test_limits() -> None:
    inputs = synthetic()
    assert capacity.zipf_top_share(1, 1.1) == 1.0
    assert capacity.zipf_top_share(2, 1.0) == pytest.approx(2 / 3)
    by_name = {lim.what.split(" (")[0]: lim for lim in capacity.limits(inputs)}
    spike = 3 * 6000
    eval_rps = 1e6 / 25.0
    assert by_name["rate-limit Redis"].breaks_at_x == pytest.approx(eval_rps * 0.75 / spike)
    hot = by_name["hottest tenant's quota counter"]
    assert hot.breaks_at_x == pytest.approx(eval_rps * 0.75 / (2 / 3 * spike))
    gpus = capacity.plan_region(inputs, 6000).tier("triton-gpu").ceiling
    assert by_name["GPU quota per region"].breaks_at_x == pytest.approx(10 / gpus)
    ordered = [lim.breaks_at_x for lim in capacity.limits(inputs)]
    assert ordered == sorted(ordered)


def test_plan_follows_the_measurements_file(tmp_path: Path) -> None:
    """Numbers are recomputed from the JSON: doubling router CPU doubles the fleet."""
    raw = json.loads(capacity.DEFAULT_INPUTS.read_text())
    before = capacity.plan_region(capacity.Inputs(raw), 10_000).tier("router")
    raw["measurements"]["router_cpu_ms_per_request_redis_c1"]["value"] *= 2
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw))
    after = capacity.plan_region(capacity.Inputs.load(path), 10_000).tier("router")
    assert after.capacity_rps == pytest.approx(before.capacity_rps / 2)
    assert after.steady == math.ceil(10_000 / (after.capacity_rps * 0.6))
    assert after.steady >= 2 * before.steady - 1


def test_repository_figures_give_the_documented_plan() -> None:
    inputs = capacity.Inputs.load()
    assert capacity.router_capacity_rps(inputs) == pytest.approx(1000 / 0.80)
    hpa = capacity.hpa_values(inputs)["router"]
    assert hpa == {
        "minReplicas": 3,
        "maxReplicas": 44,
        "targetInflightPerPod": "3233m",
        "maxInFlight": 63,
    }
    ten_k = capacity.plan_region(inputs, 10_000)
    assert ten_k.tier("triton-gpu").floor == 2
    first = capacity.limits(inputs)[0]
    assert first.what.startswith("rate-limit Redis") and first.breaks_at_x < 1.5


def test_doc_tables_equal_the_script_output(tmp_path: Path) -> None:
    assert capacity.main(["--check", str(DOC)]) == 0
    generated = capacity.render_markdown(capacity.Inputs.load())
    assert generated in DOC.read_text()
    stale = tmp_path / "capacity.md"
    stale.write_text(DOC.read_text().replace("| router (pods) |", "| router (pods)  |", 1))
    assert capacity.main(["--check", str(stale)]) == 1
    assert capacity.main(["--write", str(stale)]) == 0
    assert capacity.main(["--check", str(stale)]) == 0
