"""``inferline slo``: the three SLIs and the remaining error budgets from a scrape.

Reads a Prometheus text exposition (the router's ``/metrics``, or a file) and
computes, over the counters since the process started (or, with ``--baseline``,
between an earlier scrape and this one), for the inference methods only
(Predict and KServe ModelInfer; health checks and metadata calls are not
requests anyone waits on):

- availability = OK / valid, where valid excludes caller errors
  (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, PERMISSION_DENIED) and quota
  rejections (RESOURCE_EXHAUSTED for a tenant over its own concurrency cap,
  counted by ``inferline_shed_total{reason="tenant_concurrency"}``; shedding of
  in-quota traffic under overload stays a failure);
- latency = OK answers under the threshold (25 ms) / OK answers;
- degraded = degraded OK answers / OK answers;

and how much of each error budget those requests have left. Disjoint by
construction: a slow success dings only latency, a degraded answer only the
degraded SLI. Same definitions as the recording rules in deploy/prometheus/.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

CALLER_ERRORS = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED"})
QUOTA_SHED_REASONS = frozenset({"tenant_concurrency"})
SLI_METHODS = frozenset({"Predict", "ModelInfer"})


@dataclass(frozen=True)
class Counts:
    """Request counts behind the SLIs (cumulative, or a window's difference)."""

    valid: float = 0.0
    ok: float = 0.0
    ok_fast: float = 0.0
    degraded: float = 0.0
    quota_rejected: float = 0.0

    def __sub__(self, other: Counts) -> Counts:
        """The window between two scrapes. A router's counters reset together
        (a restart): if any went down, or the differences contradict each other
        (more OK than valid requests, more fast than OK: a reset hidden in a sum
        of routers), the window is what the counters hold now, for every field
        alike. Judging each field on its own mixed windows: 5% availability, or
        150%."""
        diff = {f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        reset = any(v < 0 for v in diff.values())
        if reset or diff["ok"] > diff["valid"] or diff["ok_fast"] > diff["ok"]:
            return self
        return Counts(**diff)


@dataclass(frozen=True)
class Report:
    counts: Counts
    availability_slo: float
    latency_slo: float
    degraded_slo: float

    @property
    def valid(self) -> float:
        return self.counts.valid

    @property
    def ok(self) -> float:
        return self.counts.ok

    @property
    def failed(self) -> float:
        return self.counts.valid - self.counts.ok

    @property
    def availability(self) -> float:
        return self.ok / self.valid if self.valid else 1.0

    @property
    def latency(self) -> float:
        return self.counts.ok_fast / self.ok if self.ok else 1.0

    @property
    def degraded_ratio(self) -> float:
        return self.counts.degraded / self.ok if self.ok else 0.0

    @property
    def budget_remaining(self) -> float:
        """Share of the availability error budget left (negative: overspent)."""
        return _budget(self.failed, (1 - self.availability_slo) * self.valid)

    @property
    def latency_budget_remaining(self) -> float:
        return _budget(self.ok - self.counts.ok_fast, (1 - self.latency_slo) * self.ok)

    @property
    def degraded_budget_remaining(self) -> float:
        return _budget(self.counts.degraded, self.degraded_slo * self.ok)


def _budget(spent: float, allowed: float) -> float:
    return 1 - spent / allowed if allowed > 0 else 1.0


def counts(text: str, *, threshold_s: float) -> Counts:
    """Sum the SLI counters of one scrape (every process series in it)."""
    valid = ok = ok_fast = degraded = quota = 0.0
    edges: set[float] = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if labels.get("method", "") not in SLI_METHODS and s.name != "inferline_shed_total":
                continue
            if s.name == "inferline_requests_total":
                code = labels.get("code", "")
                if code in CALLER_ERRORS:
                    continue
                valid += s.value
                if code == "OK":
                    ok += s.value
                    if labels.get("degraded") == "true":
                        degraded += s.value
            elif s.name == "inferline_shed_total":
                if labels.get("reason") in QUOTA_SHED_REASONS:
                    quota += s.value
            elif (
                s.name == "inferline_request_duration_seconds_bucket"
                and labels.get("code") == "OK"
                and labels.get("le", "+Inf") != "+Inf"
            ):
                le = float(labels["le"])
                edges.add(le)
                if le == threshold_s:
                    ok_fast += s.value
    if edges and threshold_s not in edges:
        known = ", ".join(f"{e:g}" for e in sorted(edges))
        raise ValueError(f"latency threshold {threshold_s:g}s is not a bucket edge ({known})")
    # Quota rejections answer RESOURCE_EXHAUSTED: in ``valid`` above, not in OK.
    # (The shed counter is copied at scrape time and may lead by a request.)
    return Counts(max(valid - quota, ok), ok, ok_fast, degraded, quota)


def report(
    text: str,
    *,
    availability_slo: float,
    latency_slo: float,
    threshold_s: float,
    degraded_slo: float = 0.01,
    baseline: str | None = None,
) -> Report:
    """SLIs from a scrape; with ``baseline`` (an earlier scrape), over the window between."""
    c = counts(text, threshold_s=threshold_s)
    if baseline is not None:
        c = c - counts(baseline, threshold_s=threshold_s)
    return Report(c, availability_slo, latency_slo, degraded_slo)


def render(r: Report, threshold_s: float = 0.025) -> str:
    def verdict(ok: bool) -> str:
        return "ok" if ok else "BREACHED"

    c = r.counts
    ms = f"<{threshold_s * 1000:g} ms"
    return "\n".join(
        [
            f"valid requests     {r.valid:,.0f}  (OK {r.ok:,.0f}, failed {r.failed:,.0f}, "
            f"quota-rejected {c.quota_rejected:,.0f} excluded)",
            f"availability       {r.availability:.5%}  target {r.availability_slo:.3%}  "
            f"{verdict(r.availability >= r.availability_slo)}  "
            f"budget left {r.budget_remaining:.1%}",
            f"latency ({ms})".ljust(19) + f"{r.latency:.5%}  target {r.latency_slo:.1%}  "
            f"{verdict(r.latency >= r.latency_slo)}  budget left {r.latency_budget_remaining:.1%}",
            f"degraded answers   {r.degraded_ratio:.5%}  of OK, objective <= {r.degraded_slo:.1%}  "
            f"{verdict(r.degraded_ratio <= r.degraded_slo)}  "
            f"budget left {r.degraded_budget_remaining:.1%}",
            f"error budget left  {r.budget_remaining:.1%}",
        ]
    )


def _read(url: str | None, path: Path | None) -> str:
    if url:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    assert path is not None
    return path.read_text()


def main(argv: list[str] | None = None) -> int:
    """Exit 0 while the availability budget holds, 1 when overspent, 2 on bad input."""
    p = argparse.ArgumentParser(
        prog="inferline slo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="router metrics URL, e.g. http://127.0.0.1:9464/metrics")
    src.add_argument("--file", type=Path, help="a saved scrape")
    p.add_argument("--baseline", type=Path, help="an earlier scrape: report the window between")
    p.add_argument("--slo", type=float, default=0.999, help="availability SLO (default 0.999)")
    p.add_argument("--latency-slo", type=float, default=0.95, help="share of OK under threshold")
    p.add_argument("--threshold", type=float, default=0.025, help="latency threshold, seconds")
    p.add_argument("--degraded-slo", type=float, default=0.01, help="max share of degraded OK")
    args = p.parse_args(argv)
    try:
        r = report(
            _read(args.url, args.file),
            availability_slo=args.slo,
            latency_slo=args.latency_slo,
            threshold_s=args.threshold,
            degraded_slo=args.degraded_slo,
            baseline=args.baseline.read_text() if args.baseline else None,
        )
    except (OSError, ValueError) as e:
        print(f"inferline slo: {e}", file=sys.stderr)
        return 2
    print(render(r, args.threshold))
    return 0 if r.budget_remaining >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
