"""deploy/prometheus/ rules, evaluated by Prometheus's own engine (promtool).

- ``promtool check`` accepts the rules and the scrape config;
- the promtool unit tests in deploy/prometheus/tests/ pass (burn-rate timing,
  blip, slow burn, quota exclusion, drift, schema mismatch, DQ, degraded,
  capture purge staleness, audit record drops);
- the same 5-minute 10% blip that does not page at 99.9% does page at 99.95%
  (why docs/DESIGN.md Part 1 chose 99.9%);
- PSI series produced by router/observability/drift.py from drifted traffic fire
  the drift alert, and from undrifted traffic fire nothing;
- every series the rules read is one the router exports, the Helm chart's
  PrometheusRule carries the same alert and record names and labels, and the
  dashboard's recorded series exist here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from router.observability.compliance import ComplianceMetrics
from router.observability.drift import ALERT, SCORE, WARN, DriftMonitor, build_reference
from router.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "inferline.rules.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="PROMTOOL NOT FOUND: the SLO and alert rules are NOT being tested. "
    "Install Debian's `prometheus` package (make system-deps, or apt-get install -y prometheus).",
)


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _rules() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


@needs_promtool
def test_promtool_accepts_rules_and_config() -> None:
    done = _promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 37 rules found" in done.stdout
    done = _promtool("check", "config", str(PROM / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
@pytest.mark.parametrize("name", sorted(p.name for p in (PROM / "tests").glob("*.yaml")))
def test_promtool_unit_tests(name: str) -> None:
    assert name in {
        "slo_test.yaml",
        "slo_slow_burn_test.yaml",
        "quality_test.yaml",
        "compliance_test.yaml",
    }
    done = _promtool("test", "rules", str(PROM / "tests" / name))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _burn_alert(factor: str, long: str, short: str, what: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": "page", "slo": "availability"},
        "exp_annotations": {
            "summary": f"inferline availability error budget burning at {factor}x "
            f"({long} and {short} windows)",
            "description": f"Failed valid requests over {long} and {short} exceed {factor}x the "
            f"error budget of the 99.9% SLO: {what}.",
        },
    }


@needs_promtool
def test_blip_pages_at_99_95_but_not_at_99_9(tmp_path: Path) -> None:
    """5 minutes at 10% errors after 6 healthy hours: 0.83% over the hour.
    Under 14.4 x 0.1% = 1.44% (no page at 99.9%), over 14.4 x 0.05% = 0.72%."""
    text = RULES.read_text()
    assert text.count("(1 - 0.999)") == 8  # the objective appears in the 4 burn alerts only
    (tmp_path / "strict.rules.yaml").write_text(text.replace("(1 - 0.999)", "(1 - 0.9995)"))
    (tmp_path / "lenient.rules.yaml").write_text(text)
    blip = [
        {
            "series": 'inferline_requests_total{method="Predict",code="OK"}',
            "values": "0+1000x360 360900+900x4 365500+1000x64",
        },
        {
            "series": 'inferline_requests_total{method="Predict",code="UNAVAILABLE"}',
            "values": "0x360 100+100x4 500x65",
        },
    ]
    page = _burn_alert("14.4", "1h", "5m", "2% of the 30-day budget in 1 hour")
    for rules, expected in (("strict", [page]), ("lenient", [])):
        test = {
            "rule_files": [f"{rules}.rules.yaml"],
            "evaluation_interval": "1m",
            "tests": [
                {
                    "interval": "1m",
                    "input_series": blip,
                    "alert_rule_test": [
                        {
                            "eval_time": "366m",
                            "alertname": "InferlineErrorBudgetBurnPage1h",
                            "exp_alerts": expected,
                        }
                    ],
                }
            ],
        }
        (tmp_path / f"{rules}_test.yaml").write_text(yaml.safe_dump(test))
        done = _promtool("test", "rules", f"{rules}_test.yaml", cwd=tmp_path)
        assert done.returncode == 0, (rules, done.stdout + done.stderr)


# --- drift: real PSI values from DriftMonitor, alerting in promtool ----------------

MINUTES = 45
SHIFT_AT = 10
ROWS_PER_MINUTE = 200  # the 2,000-row window is 10 minutes of this traffic


def _psi_minutes(*, drifted: bool) -> dict[str, list[float | None]]:
    """PSI gauge per feature as scraped from ``Metrics`` once a simulated minute."""
    rng = np.random.default_rng(7)
    names = ["amount", "account_age_days", "hour_of_day"]
    train = rng.normal(size=(20_000, 3))
    train[:, 2] = rng.integers(0, 24, 20_000)

    def score(x: np.ndarray) -> np.ndarray:
        return np.asarray(1 / (1 + np.exp(-x[:, 0])))

    mon = DriftMonitor(window=2000, min_samples=200)
    ref = build_reference(train, score(train), [{"name": n} for n in names])
    assert mon.register("fraud", 2, names, ref)
    metrics = Metrics(lambda: (frozenset({"demo"}), frozenset({"fraud"})))
    series: dict[str, list[float | None]] = {n: [] for n in [*names, SCORE]}
    for minute in range(MINUTES + 1):
        for _ in range(ROWS_PER_MINUTE // 20):  # 20-candidate requests
            x = rng.normal(size=(20, 3)).astype(np.float32)
            x[:, 2] = rng.integers(0, 24, 20)
            if drifted and minute >= SHIFT_AT:
                x[:, 0] += 2.0  # amount moves by two training standard deviations
            mon.observe("fraud", 2, x, score(x).astype(np.float32))
        metrics.sync_gauges(inflight=0, breakers={}, shed={}, caches=[], drift=mon.snapshot())
        scraped = {
            s.labels["feature"]: s.value
            for fam in text_string_to_metric_families(metrics.render().decode())
            for s in fam.samples
            if s.name == "inferline_drift_psi"
        }
        for feature, values in series.items():
            values.append(scraped.get(feature))
    return series


def _firing_at(series: dict[str, list[float | None]], at: int, hold: int = 15) -> set[str]:
    """Features whose PSI was above ALERT at every minute of [at - hold, at]."""
    return {
        f
        for f, v in series.items()
        if all(x is not None and x > ALERT for x in v[at - hold : at + 1])
    }


def _drift_alerts(series: dict[str, list[float | None]], at: int) -> list[dict[str, Any]]:
    return [
        {
            "exp_labels": {
                "severity": "ticket",
                "slo": "quality",
                "model": "fraud",
                "version": "2",
                "feature": f,
            },
            "exp_annotations": {
                "summary": f"Input or score drift (PSI > 0.25) for fraud@2 {f}",
                "description": "The live window's distribution moved away from the version's "
                "training reference.",
            },
        }
        for f in sorted(_firing_at(series, at))
    ]


def _promtool_drift(
    tmp_path: Path, series: dict[str, list[float | None]], checks: list[int]
) -> subprocess.CompletedProcess[str]:
    psi = 'inferline_drift_psi{model="fraud",version="2",feature="%s"}'
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": psi % f,
                        "values": " ".join("_" if v is None else repr(v) for v in values),
                    }
                    for f, values in series.items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": f"{at}m",
                        "alertname": "InferlineFeatureDrift",
                        "exp_alerts": _drift_alerts(series, at),
                    }
                    for at in checks
                ],
            }
        ],
    }
    (tmp_path / "drift_test.yaml").write_text(yaml.safe_dump(test))
    return _promtool("test", "rules", "drift_test.yaml", cwd=tmp_path)


@needs_promtool
def test_drifted_traffic_fires_the_drift_alert(tmp_path: Path) -> None:
    series = _psi_minutes(drifted=True)
    before = [v for f in series for v in series[f][1:SHIFT_AT] if v is not None]
    assert before and max(before) < WARN
    # The shifted feature and the score (a function of it) cross 0.25 within the
    # window; the untouched features stay under 0.1 throughout.
    assert series["amount"][-1] > ALERT and series[SCORE][-1] > ALERT  # type: ignore[operator]
    for f in ("account_age_days", "hour_of_day"):
        assert max(v for v in series[f] if v is not None) < WARN, f
    crossed = next(i for i, v in enumerate(series["amount"]) if v is not None and v > ALERT)
    assert SHIFT_AT < crossed <= SHIFT_AT + 10
    assert _firing_at(series, MINUTES) == {"amount", SCORE}
    # Pending for 15 minutes after crossing, then firing; promtool must agree.
    assert _firing_at(series, crossed + 14) == set()
    done = _promtool_drift(tmp_path, series, [crossed + 14, crossed + 16, MINUTES])
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_undrifted_traffic_fires_nothing(tmp_path: Path) -> None:
    series = _psi_minutes(drifted=False)
    values = [v for vs in series.values() for v in vs if v is not None]
    assert len(values) == 4 * (MINUTES + 1) and max(values) < WARN
    done = _promtool_drift(tmp_path, series, [20, 30, MINUTES])
    assert done.returncode == 0, done.stdout + done.stderr


# --- consistency with the router, the chart and the dashboard ----------------------


def _exported_names() -> set[str]:
    m = Metrics(lambda: (frozenset(), frozenset()))
    ComplianceMetrics(m.registry)  # registered on the same registry by router.compliance
    m.observe_rpc("/x/Predict", "OK", 0.001, {"stages_us": {"total": 1}})
    text = m.render().decode()
    families = set(re.findall(r"^# TYPE (\w+)", text, re.M))
    return {f + s for f in families for s in ("", "_total", "_bucket", "_count", "_sum")}


def test_rules_read_only_series_the_router_exports() -> None:
    exported = _exported_names()
    recorded = {r["record"] for r in _rules() if "record" in r}
    for rule in _rules():
        for name in re.findall(r"\b(inferline[_:][a-z0-9_:]+)", rule["expr"]):
            assert name in exported or name in recorded, (
                name,
                rule.get("alert", rule.get("record")),
            )


def test_chart_rules_carry_the_same_names_and_labels() -> None:
    """The Helm chart's PrometheusRule may lag in expressions (see the docs), but its
    alert and record names, labels, ``for`` and the objective must match here."""
    pytest.importorskip("helm_python", reason="helm-python-sdk not installed (dev extra)")
    from tests.unit.test_helm_render import of_kind, rendered

    chart = [
        r
        for g in of_kind(rendered("gpu"), "PrometheusRule")[0]["spec"]["groups"]
        for r in g["rules"]
    ]
    ours = {r.get("alert") or r["record"]: r for r in _rules()}
    for rule in chart:
        name = rule.get("alert") or rule["record"]
        assert name in ours, name
        if "alert" in rule:
            assert rule.get("labels") == ours[name].get("labels"), name
            assert rule.get("for") == ours[name].get("for"), name
        for objective in re.findall(r"\(1 - ([0-9.]+)\)", rule["expr"]):
            assert objective == "0.999", name


def test_dashboard_recorded_series_are_defined_here() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "inferline.json").read_text())
    recorded = {r["record"] for r in _rules() if "record" in r}
    exported = _exported_names()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    for expr in exprs:
        for name in re.findall(r"\b(inferline:[a-z0-9_:]+)", expr):
            assert name in recorded, (name, expr)
        for name in re.findall(r"\b(inferline_[a-z0-9_]+)", expr):
            assert name in exported, (name, expr)


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel query is valid PromQL (as a recording rule, with the Grafana
    variables set to match everything)."""
    dash = json.loads((ROOT / "deploy" / "grafana" / "inferline.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    rules = [
        {"record": f"dashboard:query_{i}", "expr": re.sub(r"\$(tenant|model)\b", ".*", e)}
        for i, e in enumerate(exprs)
    ]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout
