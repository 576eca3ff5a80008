"""Faults injected into real processes under steady load (bench/fault_drill.py).

Must hold for every fault: no request left unanswered at its deadline; answers
during the fault are degraded (never errors) and say which rung answered.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import drill_core
from bench import fault_drill as fd

RPS, SECONDS, DEADLINE_S = 60.0, 4.0, 0.25


async def test_python_backend_stub_killed(demo_build: Path, tmp_path: Path) -> None:
    r = await fd.drill_stub_kill(demo_build, tmp_path, RPS, SECONDS, DEADLINE_S)
    assert r.unanswered_at_deadline == 0 and r.errors == {}, (r.errors, r.extra)
    assert r.ok == r.sent
    assert (
        r.degraded_by_level.get("STATIC_DEFAULT", 0) + r.degraded_by_level.get("CACHED_SCORE", 0)
        > r.sent / 3
    )  # everything after the kill falls down the ladder
    assert r.time_to_degrade_s is not None and r.time_to_degrade_s < 1.5


async def test_tritonserver_killed(demo_build: Path, tmp_path: Path) -> None:
    r = await fd.drill_triton_kill(demo_build, tmp_path, RPS, SECONDS, DEADLINE_S)
    assert r.unanswered_at_deadline == 0 and r.errors == {}, (r.errors, r.extra)
    assert r.degraded_by_level.get("PRIMARY", 0) < r.sent
    assert r.time_to_degrade_s is not None and r.time_to_degrade_s < 1.0


async def test_online_store_hang_and_recovery(demo_build: Path, tmp_path: Path) -> None:
    r = await fd.drill_redis_hang(demo_build, tmp_path, RPS, SECONDS, DEADLINE_S)
    assert r.unanswered_at_deadline == 0 and r.errors == {}, (r.errors, r.extra)
    assert r.ok == r.sent
    assert r.time_to_degrade_s is not None  # defaults + feature_store_unavailable
    assert r.time_to_recover_s is not None and r.time_to_recover_s < 2.5, r.extra


async def test_slow_online_store_degrades_then_recovers(demo_build: Path, tmp_path: Path) -> None:
    r = await fd.drill_slow_store(demo_build, tmp_path, RPS, SECONDS, DEADLINE_S)
    assert r.unanswered_at_deadline == 0 and r.errors == {} and r.ok == r.sent, (r.errors, r.extra)
    assert r.time_to_degrade_s is not None and r.time_to_degrade_s < 1.0
    assert r.time_to_recover_s is not None and r.time_to_recover_s < 2.5, r.extra
    assert r.admitted_p99_ms is not None and r.admitted_p99_ms < 100  # cut at the budget


async def test_tritonserver_restarted_recovers_primary(demo_build: Path, tmp_path: Path) -> None:
    r = await fd.drill_triton_restart(demo_build, tmp_path, RPS, 2 * SECONDS, DEADLINE_S)
    assert r.unanswered_at_deadline == 0 and r.errors == {} and r.ok == r.sent, (r.errors, r.extra)
    assert r.degraded_by_level.get("PRIMARY", 0) < r.sent  # the ladder answered meanwhile
    assert "fault_cleared_at_s" in r.extra  # Triton was ready again before the run ended
    assert r.time_to_recover_s is not None and r.time_to_recover_s < 2.5, r.extra


async def test_blackholed_online_store_degrades_then_heals(
    demo_build: Path, tmp_path: Path
) -> None:
    r = await fd.drill_blackhole_store(demo_build, tmp_path, RPS, SECONDS, DEADLINE_S)
    assert r.unanswered_at_deadline == 0 and r.errors == {} and r.ok == r.sent, (r.errors, r.extra)
    assert r.time_to_degrade_s is not None and r.time_to_degrade_s < 1.0
    assert r.time_to_recover_s is not None and r.time_to_recover_s < 2.5, r.extra


async def test_half_failing_backend_bounds_upstream_attempts(
    demo_build: Path, tmp_path: Path
) -> None:
    r = await fd.drill_half_failing_backend(demo_build, tmp_path, RPS, SECONDS, DEADLINE_S)
    assert r.unanswered_at_deadline == 0 and r.errors == {} and r.ok == r.sent, (r.errors, r.extra)
    assert r.extra["injected_failures"] > 0
    assert r.extra["upstream_infer_calls"] > 0
    assert r.extra["attempts_per_request"] <= 1.1


async def test_spike_is_shed_or_served_in_time(demo_build: Path, tmp_path: Path) -> None:
    r = await fd.drill_spike(demo_build, tmp_path, DEADLINE_S, 2.0)
    assert r.unanswered_at_deadline == 0, (r.errors, r.extra)
    assert set(r.errors) <= {"RESOURCE_EXHAUSTED"}
    assert r.admitted_p99_ms is not None and r.admitted_p99_ms < DEADLINE_S * 1000
    assert r.extra["goodput_rps"] > 100


@pytest.mark.parametrize("n", [0])
def test_markdown_table_names_every_column(n: int) -> None:
    r = drill_core.DrillResult("x", 10, 10, {"PRIMARY": 10}, {}, n, 0.05, None, 3.2)
    text = drill_core.markdown([r], "cmd")
    assert "| x | 10 | 10 |" in text and "**0**" in text and "50 ms" in text
