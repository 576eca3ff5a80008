"""Release metrics: per-arm windows and shadow comparisons.

Per-arm request counts and status codes are already in ``inferline_requests``
(its ``arm`` label). The series here are the decision inputs of the canary
controller, exported as gauges of the same windows it reads (synced at scrape
time, so the hot path pays nothing), plus shadow traffic counters and the
candidate's latency and score difference against the primary.
Label values are bounded: arms come from experiments (capped), models from
the routing table.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

from router.observability.metrics import LATENCY_BUCKETS, OTHER, LabelBound, _in_process_values
from router.pipeline.arms import ArmStats

DIFF_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class ReleaseMetrics:
    def __init__(self, registry: CollectorRegistry, *, arm_cap: int = 20) -> None:
        with _in_process_values():
            self._define(registry, arm_cap)

    def _define(self, registry: CollectorRegistry, arm_cap: int) -> None:
        self._arm = LabelBound(arm_cap)
        self._model = LabelBound(50)
        self._version = LabelBound(100)
        labels = ["model", "arm"]
        self.arm_latency = Histogram(
            "inferline_arm_request_duration_seconds",
            "Router latency of requests per arm.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.arm_answers = Counter(
            "inferline_arm_answers",
            "Requests per arm by result: ok (its version answered) or error (failed or a "
            "fallback rung answered).",
            [*labels, "result"],
            registry=registry,
        )
        self.arm_score_summary = Summary(
            "inferline_arm_score",
            "Scores answered per arm (mean = rate(sum) / rate(count)).",
            labels,
            registry=registry,
        )
        self._children: dict[tuple[str, ...], tuple[Histogram, Counter, Counter, Summary]] = {}
        self.arm_requests = Gauge(
            "inferline_arm_window_requests",
            "Requests in the arm's decision window.",
            labels,
            registry=registry,
        )
        self.arm_errors = Gauge(
            "inferline_arm_window_error_ratio",
            "Share of the arm's window not answered by its own version.",
            labels,
            registry=registry,
        )
        self.arm_p99 = Gauge(
            "inferline_arm_window_p99_seconds",
            "p99 router latency of the arm's window.",
            labels,
            registry=registry,
        )
        self.arm_score = Gauge(
            "inferline_arm_window_score_mean",
            "Mean score of the arm's window.",
            labels,
            registry=registry,
        )
        self.arm_kpi = Gauge(
            "inferline_arm_outcome_mean",
            "Mean ingested business outcome per arm.",
            labels,
            registry=registry,
        )
        self.arm_calibration = Gauge(
            "inferline_arm_calibration_gap",
            "Mean predicted score minus mean outcome over joined requests, per arm.",
            labels,
            registry=registry,
        )
        self.shadow = Counter(
            "inferline_shadow_requests",
            "Mirrored requests by result (ok|error|dropped).",
            ["model", "version", "result"],
            registry=registry,
        )
        self.shadow_latency = Histogram(
            "inferline_shadow_duration_seconds",
            "Candidate inference latency of mirrors.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.shadow_diff = Histogram(
            "inferline_shadow_score_abs_diff",
            "Mean |candidate - primary| score per mirror.",
            ["model", "version"],
            buckets=DIFF_BUCKETS,
            registry=registry,
        )

    def on_arm(self, model: str, arm: str, latency_s: float, ok: bool, score: float) -> None:
        """Per-request arm series (hot path: children cached per label pair)."""
        key = (model, arm)
        children = self._children.get(key)
        if children is None:
            m, a = self._model(model), self._arm(arm)
            with _in_process_values():
                children = self._children[key] = (
                    self.arm_latency.labels(m, a),
                    self.arm_answers.labels(m, a, "ok"),
                    self.arm_answers.labels(m, a, "error"),
                    self.arm_score_summary.labels(m, a),
                )
        latency, ok_c, err_c, scores = children
        latency.observe(latency_s)
        (ok_c if ok else err_c).inc()
        if ok and not math.isnan(score):
            scores.observe(score)

    def on_shadow(
        self, model: str, version: int, result: str, latency_s: float, diff: float
    ) -> None:
        m = self._model(model)
        v = self._version(f"{model}@{version}").partition("@")[2] or OTHER
        with _in_process_values():
            self.shadow.labels(m, v, result).inc()
            if result == "ok":
                self.shadow_latency.labels(m, v).observe(latency_s)
                self.shadow_diff.labels(m, v).observe(diff)

    def sync(self, arms: ArmStats) -> None:
        with _in_process_values():
            self._sync(arms)

    def _sync(self, arms: ArmStats) -> None:
        for (model, arm), w in arms.items():
            key = (self._model(model), self._arm(arm))
            self.arm_requests.labels(*key).set(w.count)
            self.arm_errors.labels(*key).set(w.error_rate())
            self.arm_p99.labels(*key).set(w.latency_quantile(0.99))
            scores = w.scores()
            self.arm_score.labels(*key).set(float(scores.mean()) if len(scores) else 0.0)
            kpi, gap = w.kpi(), w.calibration_gap()
            if kpi is not None and gap is not None:
                self.arm_kpi.labels(*key).set(kpi)
                self.arm_calibration.labels(*key).set(gap)
