"""``inferline slo``: the three SLIs and the remaining error budget from a scrape.

Reads a Prometheus text exposition (the router's ``/metrics``, or a file) and
computes, over the counters since the process started:

- availability = OK / valid, where valid excludes caller errors
  (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, PERMISSION_DENIED);
- latency = OK answers under the threshold (25 ms) / OK answers;
- degraded = degraded OK answers / OK answers;

and how much of the availability error budget those requests have left.
Disjoint by construction: a slow success dings only latency, a degraded answer
only the degraded SLI.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

CALLER_ERRORS = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED"})


@dataclass(frozen=True)
class Report:
    valid: float
    ok: float
    failed: float
    ok_fast: float
    degraded: float
    availability_slo: float
    latency_slo: float

    @property
    def availability(self) -> float:
        return self.ok / self.valid if self.valid else 1.0

    @property
    def latency(self) -> float:
        return self.ok_fast / self.ok if self.ok else 1.0

    @property
    def degraded_ratio(self) -> float:
        return self.degraded / self.ok if self.ok else 0.0

    @property
    def budget_remaining(self) -> float:
        """Fraction of the availability error budget left (negative: overspent)."""
        allowed = (1 - self.availability_slo) * self.valid
        if allowed == 0:
            return 1.0
        return 1 - self.failed / allowed


def report(text: str, *, availability_slo: float, latency_slo: float, threshold_s: float) -> Report:
    valid = ok = ok_fast = degraded = 0.0
    le = f"{threshold_s:g}"
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "inferline_requests_total" and s.labels.get("method") == "Predict":
                code = s.labels.get("code", "")
                if code in CALLER_ERRORS:
                    continue
                valid += s.value
                if code == "OK":
                    ok += s.value
                    if s.labels.get("degraded") == "true":
                        degraded += s.value
            elif (
                s.name == "inferline_request_duration_seconds_bucket"
                and s.labels.get("method") == "Predict"
                and s.labels.get("code") == "OK"
                and s.labels.get("le") in (le, f"{threshold_s}")
            ):
                ok_fast += s.value
    return Report(valid, ok, valid - ok, ok_fast, degraded, availability_slo, latency_slo)


def render(r: Report) -> str:
    def verdict(value: float, target: float) -> str:
        return "ok" if value >= target else "BREACHED"

    return "\n".join(
        [
            f"valid requests     {r.valid:,.0f}  (OK {r.ok:,.0f}, failed {r.failed:,.0f})",
            f"availability       {r.availability:.5%}  target {r.availability_slo:.3%}  "
            f"{verdict(r.availability, r.availability_slo)}",
            f"latency (<25 ms)   {r.latency:.5%}  target {r.latency_slo:.1%}  "
            f"{verdict(r.latency, r.latency_slo)}",
            f"degraded answers   {r.degraded_ratio:.5%}  of OK answers",
            f"error budget left  {r.budget_remaining:.1%}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="inferline slo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="router metrics URL, e.g. http://127.0.0.1:9464/metrics")
    src.add_argument("--file", type=Path, help="a saved scrape")
    p.add_argument("--slo", type=float, default=0.999, help="availability SLO")
    p.add_argument("--latency-slo", type=float, default=0.95, help="share of OK under threshold")
    p.add_argument("--threshold", type=float, default=0.025, help="latency threshold, seconds")
    args = p.parse_args(argv)
    if args.url:
        with urllib.request.urlopen(args.url, timeout=5) as resp:
            text = resp.read().decode()
    else:
        text = args.file.read_text()
    r = report(
        text, availability_slo=args.slo, latency_slo=args.latency_slo, threshold_s=args.threshold
    )
    print(render(r))
    return 0 if r.budget_remaining >= 0 else 1


def cli() -> int:
    """Entry point of the ``inferline`` console script: ``inferline slo ...``."""
    argv = sys.argv[1:]
    if not argv or argv[0] != "slo":
        print("usage: inferline slo (--url URL | --file FILE) [--slo 0.999]", file=sys.stderr)
        return 2
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
