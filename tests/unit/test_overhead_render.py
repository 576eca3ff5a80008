"""bench.overhead's docs block: the plan it ran, the batch Triton formed, the verdicts."""

from __future__ import annotations

import copy
from typing import Any

from bench.overhead import checks, markdown, markers


def _target(rps: float, p50: float, router: float, envoy: float, triton: float) -> dict[str, Any]:
    median = {
        "throughput_rps": rps,
        "latency_ms": {"p50": p50, "p95": p50 + 0.2, "p99": p50 + 0.4},
        "router_cpu_ms_per_req": router,
        "envoy_cpu_ms_per_req": envoy,
        "triton_cpu_ms_per_req": triton,
    }
    return {"median": median}


def _run(rps: float, batch: float | None, router: float) -> dict[str, Any]:
    run: dict[str, Any] = {
        "rps": rps,
        "h2load_2xx": 1000,
        "mean_ms": 12.5,
        "triton_delta": {"success": 1100.0, "failure": 0.0, "canceled": 0.0},
        "cpu_ms_per_req": {"router": router, "envoy": 0.15, "triton": 0.2},
    }
    if batch is not None:
        run |= {"triton_batch": batch, "triton_queue_ms": 0.28}
    return run


def _result(batch: bool = True, **plan: Any) -> dict[str, Any]:
    b = 1.9 if batch else None
    return {
        "machine": {
            "label": "test box", "cpus": 2, "mem_gib": 24, "os": "Linux",
            "python": "3.11", "date": "2026-11-29 20:00 UTC", "loadavg_start": ["1", "1", "1"],
        },
        "command": "python -m bench.overhead",
        "plan": {"grpc_lane": False, "online_store": "sqlite", "pin": False,
                 "clients": 4, "streams": 8, "routers": 1, "envoy_workers": 2, **plan},
        "latency": {
            "targets": {
                "full": _target(500, 1.9, 0.62, 0.38, 0.57),
                "triton": _target(1150, 0.85, 0.0, 0.0, 0.58),
            },
            "overhead": {"p50_ms": 1.05, "p95_ms": 1.2, "p99_ms": 1.4},
        },
        "throughput": {
            "runs": {
                "full": [_run(2500, b, 0.29), _run(2600, b, 0.28)],
                "triton": [_run(12000, 23.7 if batch else None, 0.0)],
            },
            "median_rps": {"full": 2550.0, "triton": 12000.0},
            "ratio": 2550.0 / 12000.0,
        },
    }  # fmt: skip


def test_block_reports_the_batch_triton_formed_on_each_path() -> None:
    md = markdown(_result())
    begin, end = markers(False)
    assert md.startswith(begin) and md.endswith(end)
    assert "| Triton batch / queue |" in md
    full = next(line for line in md.splitlines() if line.startswith("| full | 2,500, 2,600"))
    assert "| 1.9 / 0.28 ms |" in full and "| 2,200 / 2,000 |" in full
    triton = next(line for line in md.splitlines() if line.startswith("| triton | 12,000"))
    assert "| 23.7 / 0.28 ms |" in triton
    assert "Throughput ratio full / triton: **0.21**." in md


def test_results_recorded_before_the_batch_column_still_render() -> None:
    md = markdown(_result(batch=False))
    full = next(line for line in md.splitlines() if line.startswith("| full | 2,500"))
    assert "| - |" in full


def test_title_names_a_non_default_topology() -> None:
    assert "router processes" not in markdown(_result()) and "Envoy worker" not in markdown(
        _result()
    )
    md = markdown(_result(routers=2, envoy_workers=1, pin=True))
    title = next(line for line in md.splitlines() if line.startswith("### "))
    assert "2 router processes (`--routers`)" in title
    assert "1 Envoy worker (`--envoy-workers`)" in title
    assert md.startswith(markers(True)[0])


def test_verdicts_compare_against_the_issue_targets() -> None:
    r = _result()
    got = checks(r)
    assert got["p50_ms"] == (1.05, 1.0, False)
    assert got["p99_ms"] == (1.4, 3.0, True)
    assert got["router_cpu_ms"] == (0.62, 0.5, False)
    assert got["throughput_ratio"][2] is False
    better = copy.deepcopy(r)
    better["throughput"]["ratio"] = 0.41
    better["latency"]["overhead"]["p50_ms"] = 0.9
    assert checks(better)["throughput_ratio"][2] and checks(better)["p50_ms"][2]
    assert "| p50 overhead | 0.90 ms | <= 1.0 ms | yes |" in markdown(better)
