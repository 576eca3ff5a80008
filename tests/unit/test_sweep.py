"""bench/sweep.py pieces that need no server: config rewriting on the real
templates, the grid, h2load plumbing, and the budget-first pick. The sweep
itself runs against tritonserver in tests/integration/test_quantized_models.py
(``--quick``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import sweep
from bench.plots import merge_json_section, sweep_plots
from triton_models.build import render_config


@pytest.mark.parametrize(
    ("model", "backend", "n"), [("fraud", "python", 33), ("fraud", "fil", 33),
                                ("ranker", "python", 26), ("ranker_int8", "python", 26)]
)  # fmt: skip
def test_rewrite_config_on_rendered_templates(model: str, backend: str, n: int) -> None:
    text = render_config(model, backend, n)
    out = sweep.rewrite_config(text, sweep.Setting(500, (8, 16, 32), 2))
    assert (
        "dynamic_batching { max_queue_delay_microseconds: 500 preferred_batch_size: [ 8, 16, 32 ] }"
        in out
    )
    assert "count: 2 kind:" in out
    assert "max_queue_delay_microseconds: 0 }" not in out and "count: 1 kind" not in out
    # Everything else is untouched.
    strip = [
        ln for ln in text.splitlines() if not ln.startswith(("dynamic_batching", "instance_group"))
    ]
    assert [
        ln for ln in out.splitlines() if not ln.startswith(("dynamic_batching", "instance_group"))
    ] == strip
    plain = sweep.rewrite_config(text, sweep.Setting(0))
    assert (
        "dynamic_batching { max_queue_delay_microseconds: 0 }" in plain and "count: 1 kind" in plain
    )


def test_rewrite_config_refuses_configs_without_the_blocks() -> None:
    with pytest.raises(ValueError, match="0 dynamic_batching"):
        sweep.rewrite_config('name: "x"\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n',
                             sweep.Setting(100))  # fmt: skip


def test_write_setting_repo_copies_version_1_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for v in ("1", "2"):
        (src / "fraud" / v).mkdir(parents=True)
        (src / "fraud" / v / "model.py").write_text(v)
    (src / "fraud" / "1" / "__pycache__").mkdir()
    (src / "fraud" / "config.pbtxt").write_text(render_config("fraud", "python", 33))
    repo = sweep.write_setting_repo(src, "fraud", sweep.Setting(1000, (), 2), tmp_path / "r")
    assert sorted(p.name for p in (repo / "fraud").iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in (repo / "fraud" / "1").iterdir()) == ["model.py"]
    assert "max_queue_delay_microseconds: 1000 }" in (repo / "fraud" / "config.pbtxt").read_text()


def test_grid_full_and_quick() -> None:
    full = sweep.grid(**{k: sweep.FULL[k] for k in ("delays", "preferred", "instances",
                                                    "preferred_delays")})  # fmt: skip
    assert len(full) == 16  # 6 delays x 2 instance counts + preferred at 2 delays x 2
    assert all(s.delay_us in (500, 2000) for s in full if s.preferred)
    assert sweep.Setting(0, (8, 16, 32), 1) not in full
    quick = sweep.grid(**{k: sweep.QUICK[k] for k in ("delays", "preferred", "instances",
                                                      "preferred_delays")})  # fmt: skip
    assert quick == [sweep.Setting(0), sweep.Setting(1000)]
    every = sweep.grid([0, 100], [(), (4,)], [1], None)
    assert every == [sweep.Setting(0), sweep.Setting(100), sweep.Setting(100, (4,))]
    assert sweep.Setting(100, (4, 8), 2).slug == "d100_p4-8_i2"


def test_h2load_shape_and_command() -> None:
    assert [sweep.h2load_shape(c) for c in (1, 8, 32, 3)] == [(1, 1), (4, 2), (4, 8), (3, 1)]
    cmd = sweep.h2load_cmd("127.0.0.1:9", Path("/b"), Path("/l"), 32, 3000)
    assert cmd[1:7] == ["--clients=4", "--max-concurrent-streams=8", "--threads=1", "--data=/b",
                        "--requests=3000", "--log-file=/l"]  # fmt: skip
    assert "--requests=4" in sweep.h2load_cmd("a:1", Path("/b"), Path("/l"), 32, 2)
    assert cmd[-1] == "http://127.0.0.1:9/inference.GRPCInferenceService/ModelInfer"


def test_latency_stats_from_log() -> None:
    rows = [f"17000000{i:08d}\t200\t{1000 + 10 * i}" for i in range(100)]
    rows += ["1700000000000000\t-1\t5", "1700000000000001\t503\t9"]
    s = sweep.latency_stats("\n".join(rows) + "\n")
    assert s["n"] == 100 and s["bad_status"] == 2
    assert s["p50_ms"] == pytest.approx(1.495) and s["max_ms"] == pytest.approx(1.99)
    assert s["p95_ms"] == pytest.approx(1.9405, abs=1e-3) and s["p99_ms"] == pytest.approx(
        1.98, abs=1e-3
    )
    assert sweep.latency_stats("1\t-1\t3\n") == {"n": 0, "bad_status": 1}


def _result(model: str, delay: int, inst: int, c1: tuple[float, float],
            c32: tuple[float, float], fail: int = 0) -> dict[str, Any]:  # fmt: skip
    s = sweep.Setting(delay, (), inst)
    pts = [{"concurrency": c, "rps": rps, "n": 100, "bad_status": 0, "triton_failures": fail,
            "p50_ms": p95 / 2, "p95_ms": p95, "triton_cpu_ms_per_req": 0.25,
            "triton_canceled": 0}
           for c, (rps, p95) in ((1, c1), (32, c32))]  # fmt: skip
    return {"model": model, "setting": {"delay_us": delay, "preferred": [], "instances": inst},
            "label": s.label, "points": pts}  # fmt: skip


def test_pick_is_budget_first_then_light_load_latency() -> None:
    results = [
        _result("m", 0, 1, (2000, 0.5), (9000, 4.0)),
        _result("m", 200, 1, (1500, 0.9), (9500, 3.0)),
        _result("m", 200, 2, (1500, 0.8), (9600, 3.5)),  # ties on throughput, more instances
        _result("m", 2000, 1, (400, 3.0), (20000, 13.0)),  # best throughput, over budget
        _result("m", 500, 2, (800, 1.0), (19000, 5.0), fail=1),  # failed requests
    ]
    p = sweep.pick(results, 12.0, tie=0.05)
    assert p["within_budget"] and p["setting"] == {"delay_us": 200, "preferred": [], "instances": 1}
    assert p["qualifying"] == 3 and "3/5 settings" in p["why"]
    # With the default 10% band the delay-0 setting joins and wins.
    assert sweep.pick(results, 12.0)["setting"]["delay_us"] == 0
    # Nothing within budget: the lowest worst-case p95, flagged.
    p = sweep.pick(results, 0.1)
    assert not p["within_budget"] and p["setting"]["delay_us"] == 200
    assert p["setting"]["instances"] == 1


def test_table_economics_and_json_sections(tmp_path: Path) -> None:
    results = [_result("m", 0, 1, (2000, 0.5), (9000, 4.0)),
               _result("m", 200, 2, (1500, 0.8), (9600, 13.5))]  # fmt: skip
    picks = {"m": sweep.pick(results, 12.0)}
    lines = sweep.format_table(results, picks).splitlines()
    assert lines[0].startswith("| model | delay us | preferred | inst | c1 rps | c1 p50 | c1 p95")
    assert lines[2] == "| **m** | 0 | - | 1 | 2000 | 0.25 | 0.50 | 9000 | 2.00 | 4.00 | 0.250 |"
    assert "13.50 (!)" in lines[3]
    econ = sweep.economics(results, picks)["m"]
    assert econ["rps_per_core"] == 4000.0 and econ["rps_per_instance"] == 9000
    path = tmp_path / "m.json"
    merge_json_section(path, "a", {"x": 1})
    merge_json_section(path, "b", {"y": 2})
    merge_json_section(path, "a", {"x": 3})
    data = json.loads(path.read_text())
    assert data["a"] == {"x": 3} and data["b"] == {"y": 2} and "$comment" in data
    report = {"budget_ms": 12.0, "date": "today", "results": results, "picks": picks}
    pngs = sweep_plots(report, tmp_path / "img")
    assert [p.name for p in pngs] == ["sweep-m.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pngs[0].stat().st_size > 10_000


def test_triton_outcomes_and_median_point() -> None:
    text = "\n".join([
        'nv_inference_request_success{model="ranker",version="1"} 100',
        'nv_inference_request_success{model="ranker_int8",version="1"} 7',
        'nv_inference_request_failure{model="ranker",reason="CANCELED",version="1"} 3',
        'nv_inference_request_failure{model="ranker",reason="BACKEND",version="1"} 2',
        'nv_inference_request_failure{model="ranker",version="2"} 1',
    ])  # fmt: skip
    assert sweep.triton_outcomes(text, "ranker") == {
        "success": 100.0, "CANCELED": 3.0, "BACKEND": 2.0, "OTHER": 1.0
    }  # fmt: skip
    assert sweep.triton_outcomes(text, "ranker_int8") == {"success": 7.0}
    runs = [{"concurrency": 8, "rps": r, "n": 10, "bad_status": 0, "triton_failures": f,
             "triton_canceled": 1, "p95_ms": p} for r, f, p in ((100, 0, 2.0), (300, 1, 1.0),
                                                              (200, 0, 9.0))]  # fmt: skip
    m = sweep.median_point(runs)
    assert m == {"concurrency": 8, "repeats": 3, "rps": 200, "n": 30, "bad_status": 0,
                 "triton_failures": 1, "triton_canceled": 3, "p95_ms": 2.0}  # fmt: skip
    assert sweep.median_point(runs[:1]) == runs[0]


def test_cli_parsing() -> None:
    assert sweep.parse_preferred("none;8,16,32") == [(), (8, 16, 32)]
    args = sweep.build_parser().parse_args(["--quick", "--delays", "0,50", "--concurrency", "2"])
    plan = sweep.plan_from_args(args)
    assert plan["delays"] == (0, 50) and plan["concurrency"] == (2,)
    assert plan["instances"] == (1,) and plan["duration_s"] == 1.0 and plan["repeats"] == 1
    full = sweep.plan_from_args(sweep.build_parser().parse_args([]))
    assert full["concurrency"] == (1, 8, 32) and full["delays"] == (0, 100, 200, 500, 1000, 2000)
    assert full["repeats"] == 2
