"""The Grafana dashboard only queries series that exist (router or Triton) or
recording rules the chart defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from router.observability.metrics import Metrics
from tests.unit.test_helm_render import of_kind, rendered

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "inferline.json"


def test_dashboard_queries_known_series() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    m = Metrics(lambda: (frozenset(), frozenset()))
    m.observe_rpc("/x/Predict", "OK", 0.001, {"stages_us": {"total": 1}})
    exposed = set(re.findall(r"^# TYPE (\w+)", generate_latest(m.registry).decode(), re.M))
    names = {n + s for n in exposed for s in ("", "_total", "_bucket", "_count", "_sum")}
    rules = {
        r["record"]
        for g in of_kind(rendered("gpu"), "PrometheusRule")[0]["spec"]["groups"]
        for r in g["rules"]
        if "record" in r
    }
    for expr in exprs:
        for name in re.findall(r"\b((?:inferline|nv)_[a-z_]+|inferline:[a-z_:0-9]+)", expr):
            assert name in names or name in rules or name.startswith("nv_inference_"), (name, expr)
