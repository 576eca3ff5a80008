"""bench.overhead end to end, cut short, on two routers and one Envoy worker:
every figure its docs block reports comes out of a real run (the full chain:
Triton, routers in edge mode, Envoy, xDS, rate-limit service)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import overhead


def test_a_short_run_reports_targets_cpu_and_tritons_batches(
    demo_build: Path, tmp_path: Path
) -> None:
    out, md = tmp_path / "overhead.json", tmp_path / "bench.md"
    rc = overhead.main(
        [
            "--build", str(demo_build), "--log-dir", str(tmp_path / "logs"),
            "--json", str(out), "--md", str(md), "--machine", "test",
            "--routers", "2", "--envoy-workers", "1",
            "--repeats", "1", "--blocks", "1", "--duration", "0.6", "--warmup", "0.2",
            "--clients", "2", "--streams", "2", "--h2-duration", "1", "--h2-warmup", "1",
        ]
    )  # fmt: skip
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["plan"]["routers"] == 2 and r["plan"]["envoy_workers"] == 1
    full = r["latency"]["targets"]["full"]["median"]
    assert full["ok"] > 0 and full["error_count"] == 0
    assert full["router_cpu_ms_per_req"] > 0 and full["envoy_cpu_ms_per_req"] > 0
    for name in ("full", "triton"):
        [run] = r["throughput"]["runs"][name]
        assert run["rps"] > 0 and run["triton_delta"]["failure"] == 0
        assert run["triton_delta"]["success"] >= run["h2load_2xx"] > 0
        assert run["triton_batch"] >= 1.0 and run["triton_queue_ms"] >= 0
        assert run["cpu_ms_per_req"]["triton"] > 0
    assert set(r["checks"]) == {"p50_ms", "p99_ms", "router_cpu_ms", "throughput_ratio"}
    text = md.read_text()
    assert "2 router processes (`--routers`), 1 Envoy worker (`--envoy-workers`)" in text
    assert "| Triton batch / queue |" in text
