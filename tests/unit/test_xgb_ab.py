"""bench.xgb_ab: the A/B repository differs only in name and prediction path,
and the summary's ratios are direct over inplace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.xgb_ab import build_repository, summarize

CONFIG = 'name: "fraud"\nbackend: "python"\nmax_batch_size: 64\n'


def test_repository_holds_both_paths_of_the_same_version(tmp_path: Path) -> None:
    src = tmp_path / "model_repository" / "fraud"
    (src / "1").mkdir(parents=True)
    (src / "1" / "model.py").write_text("# model\n")
    (src / "1" / "xgboost.json").write_text("{}")
    (src / "config.pbtxt").write_text(CONFIG)
    repo = build_repository(tmp_path)
    assert sorted(p.name for p in repo.iterdir()) == ["fraud", "fraud_inplace"]
    for name, mode in (("fraud", "direct"), ("fraud_inplace", "inplace")):
        cfg = (repo / name / "config.pbtxt").read_text()
        assert cfg.startswith(f'name: "{name}"\n')
        assert f'key: "xgboost_predict" value: {{ string_value: "{mode}" }}' in cfg
        assert (repo / name / "1" / "xgboost.json").read_text() == "{}"
    assert (src / "config.pbtxt").read_text() == CONFIG  # the source is untouched


def _report(rps: dict[str, float], cpu: dict[str, float]) -> dict[str, Any]:
    return {
        "date": "2026-11-28 18:18 UTC",
        "plan": {"repeats": 3},
        "results": [
            {
                "model": m,
                "points": [
                    {
                        "concurrency": 1,
                        "rps": rps[m],
                        "p50_ms": 1000 / rps[m],
                        "triton_cpu_ms_per_req": cpu[m],
                    }
                ],
            }
            for m in rps
        ],
    }


def test_summary_averages_the_orders_and_divides_direct_by_inplace() -> None:
    a = _report({"fraud": 1500.0, "fraud_inplace": 1000.0}, {"fraud": 0.6, "fraud_inplace": 0.8})
    b = _report({"fraud": 1700.0, "fraud_inplace": 1000.0}, {"fraud": 0.6, "fraud_inplace": 0.8})
    text = summarize([a, b])
    assert "2 orders x 3 passes" in text
    assert "| 1 | dense C entry point | 1,600 rps |" in text
    assert "| 1 | ratio | 1.60 |" in text
    assert text.rstrip().endswith("| 0.75 |")  # CPU per request: 0.6 / 0.8
