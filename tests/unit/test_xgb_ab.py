"""bench.xgb_ab: the A/B repository differs only in name and prediction path,
and the summary's ratios are the first path over the second."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench.xgb_ab import _paths, build_repository, summarize

CONFIG = 'name: "fraud"\nbackend: "python"\nmax_batch_size: 64\n'


def test_repository_holds_each_path_of_the_same_version(tmp_path: Path) -> None:
    src = tmp_path / "model_repository" / "fraud"
    (src / "1").mkdir(parents=True)
    (src / "1" / "model.py").write_text("# model\n")
    (src / "1" / "xgboost.json").write_text("{}")
    (src / "config.pbtxt").write_text(CONFIG)
    repo = build_repository(tmp_path)
    assert repo == tmp_path / "xgb_ab" / "model_repository"
    assert sorted(p.name for p in repo.iterdir()) == ["fraud_direct", "fraud_onnx"]
    for mode in ("onnx", "direct"):
        name = f"fraud_{mode}"
        cfg = (repo / name / "config.pbtxt").read_text()
        assert cfg.startswith(f'name: "{name}"\n')
        assert f'key: "xgboost_predict" value: {{ string_value: "{mode}" }}' in cfg
        assert (repo / name / "1" / "xgboost.json").read_text() == "{}"
    assert (src / "config.pbtxt").read_text() == CONFIG  # the source is untouched
    elsewhere = build_repository(tmp_path, ("direct", "inplace"), tmp_path / "other")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["fraud_direct", "fraud_inplace"]


def test_paths_are_two_different_known_ones() -> None:
    assert _paths("direct,inplace") == ("direct", "inplace")
    for bad in ("onnx", "onnx,onnx", "onnx,fil", "onnx,direct,inplace"):
        with pytest.raises(argparse.ArgumentTypeError):
            _paths(bad)


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


def test_summary_averages_the_orders_and_divides_the_first_path_by_the_second() -> None:
    cpu = {"fraud_onnx": 0.6, "fraud_direct": 0.8}
    a = _report({"fraud_onnx": 1500.0, "fraud_direct": 1000.0}, cpu)
    b = _report({"fraud_onnx": 1700.0, "fraud_direct": 1000.0}, cpu)
    text = summarize([a, b], ("onnx", "direct"))
    assert "2 orders x 3 passes" in text
    assert "| 1 | ONNX forest (onnxruntime) | 1,600 rps |" in text
    assert "| 1 | XGBoost dense C entry point | 1,000 rps |" in text
    assert "| 1 | ratio | 1.60 |" in text
    assert text.rstrip().endswith("| 0.75 |")  # CPU per request: 0.6 / 0.8
