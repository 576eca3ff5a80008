"""The edge benchmark's pure parts: tenant files, admission math, summaries, markdown.

The benchmarks themselves need the whole stack (Envoy, router, Triton, Redis); what
decides their verdicts (expected admitted count, tolerance, medians, ratios) and what
ends up in docs/benchmarks.md is checked here without it.
"""

from __future__ import annotations

import collections
import copy
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from bench import chain
from bench import edge_bench as eb
from bench.loadgen import Samples, summarize
from inferline_edge.tenants import EdgeConfig
from scripts.edge_stack import DEFAULT_TENANTS


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_TENANTS.read_text())
    return data


def test_overhead_tenants_never_limit_and_split_quota(shipped: dict[str, Any]) -> None:
    before = copy.deepcopy(shipped)
    cfg = EdgeConfig.model_validate(eb.overhead_tenants(shipped))  # a file the edge accepts
    assert shipped == before  # the shipped config is not touched
    for t in cfg.tenants.values():
        assert t.rate_limit.requests_per_second >= 100_000 and t.rate_limit.burst >= 100_000
    assert cfg.tenants["demo"].quota_per_minute == 0  # no descriptor: no rate-limit call
    assert cfg.tenants["payments"].quota_per_minute >= 100_000_000  # called, never reached


@pytest.mark.parametrize("quota", [True, False])
def test_noisy_tenants_shrink_only_payments(shipped: dict[str, Any], quota: bool) -> None:
    cfg = EdgeConfig.model_validate(eb.noisy_tenants(shipped, 50, 10, quota))
    pay, demo = cfg.tenants["payments"].rate_limit, cfg.tenants["demo"].rate_limit
    assert (pay.requests_per_second, pay.burst) == (50, 10)
    assert demo.model_dump() == shipped["tenants"]["demo"]["rate_limit"]
    quotas = {tid: t.quota_per_minute for tid, t in cfg.tenants.items()}
    if quota:
        assert quotas == {k: t.get("quota_per_minute", 0) for k, t in shipped["tenants"].items()}
    else:
        assert set(quotas.values()) == {0}


def test_expected_admitted_and_tolerance() -> None:
    # 150 rps evenly for 15 s: 2250 sends, last at 14.993 s; bucket 50 rps, burst 10.
    span = 2249 / 150
    exp = eb.expected_admitted(50, 10, span)
    assert exp == pytest.approx(10 + 50 * 14.99333, rel=1e-6)
    assert eb.within_tolerance(round(exp), exp)
    assert eb.within_tolerance(exp * 1.099, exp) and eb.within_tolerance(exp * 0.901, exp)
    assert not eb.within_tolerance(exp * 1.11, exp) and not eb.within_tolerance(exp * 0.89, exp)
    assert not eb.within_tolerance(2250, exp)  # no limit at all is far outside


def _summary(latencies_ms: list[float], errors: dict[str, int] | None = None) -> dict[str, Any]:
    s = Samples([x / 1e3 for x in latencies_ms], collections.Counter(errors or {}), 1.0)
    return summarize(s)


def test_phase_summary_success_rate() -> None:
    s = Samples([0.002] * 98, collections.Counter({"UNAVAILABLE": 2}), 1.0)
    out = eb.phase_summary(s)
    assert out["sent"] == 100 and out["success_rate"] == pytest.approx(0.98)
    assert "cpu" not in out
    blocks = [
        {"others_busy_pct": 10.0, "client_s": 1.0},
        {"others_busy_pct": 30.0, "client_s": 3.0},
    ]
    assert eb.phase_summary(s, blocks)["cpu"] == {"others_busy_pct": 20.0, "client_s": 2.0}


def _phase(tail_ms: float) -> dict[str, Any]:
    """100 calls: 98 at 1 ms, 2 at ``tail_ms`` (so p99 is ``tail_ms``)."""
    s = Samples([x / 1e3 for x in [1.0] * 98 + [tail_ms] * 2], elapsed_s=1.0)
    return eb.phase_summary(s) | {"cpu": {"others_busy_pct": 10.0}}


def _repeat(order: list[str], p99_alone: float, p99_noisy: float, **a: Any) -> dict[str, Any]:
    alone, noisy = _phase(p99_alone), _phase(p99_noisy)
    sent, admitted = a.get("sent", 2250), a.get("admitted", 760)
    exp = eb.expected_admitted(50, 10, 2249 / 150)
    refused = a.get("refused", sent - admitted)
    return {
        "order": order,
        "alone": alone,
        "noisy": noisy,
        "p99_ratio": noisy["latency_ms"]["p99"] / alone["latency_ms"]["p99"],
        "A": {
            "sent": sent,
            "admitted": admitted,
            "expected": exp,
            "admitted_error": admitted / exp - 1,
            "within_tolerance": eb.within_tolerance(admitted, exp),
            "resource_exhausted": refused,
            "with_retry_after": a.get("retry_after", refused),
            "excess_exhausted": refused == sent - admitted,
            "retry_after_on_all": a.get("retry_after", refused) == refused,
            "detail_types": ["QuotaFailure", "RetryInfo"],
        },
    }


def test_noisy_median_and_checks_pass() -> None:
    reps = [
        _repeat(["alone", "noisy"], 10.0, 12.0),
        _repeat(["noisy", "alone"], 10.0, 20.0),  # one bad repeat does not decide alone
        _repeat(["alone", "noisy"], 10.0, 11.0),
    ]
    m = eb.noisy_median(reps)
    assert m["p99_ratio"] == pytest.approx(reps[0]["p99_ratio"])  # the middle one
    assert m["A.admitted"] == 760 and m["alone.success_rate"] == 1.0
    assert all(eb.noisy_checks(reps).values())


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({"admitted": 900}, "A admitted within 10% of its bucket"),
        ({"refused": 1000}, "all of A's excess refused RESOURCE_EXHAUSTED"),
        ({"retry_after": 5}, "every refusal carries retry-after"),
    ],
)
def test_noisy_checks_catch_each_failure(change: dict[str, int], failed: str) -> None:
    reps = [_repeat(["alone", "noisy"], 10.0, 11.0, **change) for _ in range(3)]
    checks = eb.noisy_checks(reps)
    assert {k for k, ok in checks.items() if not ok} == {failed}


def test_noisy_checks_b_errors_and_p99_ratio() -> None:
    reps = [_repeat(["alone", "noisy"], 10.0, 16.0) for _ in range(3)]
    reps[1]["noisy"]["success_rate"] = 0.999
    failed = {k for k, ok in eb.noisy_checks(reps).items() if not ok}
    assert failed == {"B 100% success, both phases", "B p99 with A <= 1.5x alone"}


def _machine() -> dict[str, Any]:
    return chain.machine_info("2 vCPU dev VM, shared") | {"date": "2026-11-28 10:00 UTC"}


def _overhead_result() -> dict[str, Any]:
    names = ["edge", "edge+quota", "router", "triton"]
    base = {"edge": 3.0, "edge+quota": 4.2, "router": 2.5, "triton": 1.3}
    runs = {n: [_summary([base[n]] * 100) for _ in range(3)] for n in names}
    for n in names:
        for r in runs[n]:
            r["envoy_cpu_ms_per_req"] = 0.4
    return {
        "benchmark": "overhead",
        "command": "python -m bench.edge_bench overhead",
        "machine": _machine(),
        "plan": {"concurrency": [1], "duration": 6.0, "blocks": 4, "repeats": 3},
        "levels": {
            "c1": {
                "concurrency": 1,
                "targets": {n: {"median": runs[n][0], "repeats": runs[n]} for n in names},
                "deltas": {
                    "envoy_mtls": chain.median_deltas(runs, "edge", "router"),
                    "quota_call": chain.median_deltas(runs, "edge+quota", "edge"),
                    "router": chain.median_deltas(runs, "router", "triton"),
                },
            }
        },
        "envoy_ratelimit_stats_delta": {"cluster.router.ratelimit.ok": 1234},
    }


def _noisy_result(p99_noisy: float) -> dict[str, Any]:
    reps = [_repeat(["alone", "noisy"][:: 1 - 2 * (i % 2)], 10.0, p99_noisy) for i in range(3)]
    return {
        "benchmark": "noisy",
        "command": "python -m bench.edge_bench noisy",
        "machine": _machine(),
        "plan": {"a_rps": 50.0, "a_burst": 10, "a_factor": 3.0, "b_rps": 50.0, "phase": 15.0},
        "repeats": reps,
        "median": eb.noisy_median(reps),
        "checks": eb.noisy_checks(reps),
    }


def _table_widths(md: str) -> set[int]:
    """Cell counts of the table rows of each table (a ragged row breaks the table)."""
    return {line.count("|") for line in md.splitlines() if line.startswith("| ")}


def test_markdown_overhead_section() -> None:
    md = eb.render_markdown([_overhead_result()])
    assert "### Envoy + mTLS overhead" in md
    assert "    python -m bench.edge_bench overhead" in md  # the command, as a code block
    assert "2 vCPU dev VM, shared" in md and "2026-11-28 10:00 UTC" in md
    assert "**Envoy + mTLS (edge - router)**" in md and "**+0.50 ms**" in md
    assert "**quota call**" in md and "**+1.20 ms**" in md
    assert "| concurrency 1 | edge | 100 rps | 3.00 ms |" in md
    assert '"cluster.router.ratelimit.ok": 1234' in md
    assert len(_table_widths(md)) == 1


def test_markdown_noisy_section_says_pass_or_miss() -> None:
    ok = eb.render_markdown([_noisy_result(12.0)])
    assert "### Noisy neighbour" in ok and "**MISS**" not in ok
    assert "| 2 | A+B, B |" in ok and "QuotaFailure, RetryInfo" in ok
    assert "- B p99 with A <= 1.5x alone: pass" in ok
    assert len(_table_widths(ok)) == 1
    miss = eb.render_markdown([_noisy_result(20.0)])
    assert "- B p99 with A <= 1.5x alone: **MISS**" in miss


def test_write_markdown_keeps_hand_written_text(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "edge.md"
    eb.write_markdown(path, "## first")
    assert path.read_text() == f"{eb.BEGIN}\n## first\n{eb.END}\n"
    path.write_text("# intro\n\n" + path.read_text() + "\n## Reading the numbers\nprose\n")
    eb.write_markdown(path, "## second\n")
    eb.write_markdown(path, "## second\n")  # idempotent: no blank lines pile up
    text = path.read_text()
    assert text.startswith("# intro\n\n" + eb.BEGIN + "\n## second\n" + eb.END)
    assert text.endswith(f"{eb.END}\n\n## Reading the numbers\nprose\n") and "first" not in text
    plain = tmp_path / "plain.md"
    plain.write_text("# someone else's notes\n")
    eb.write_markdown(plain, "## gen")
    assert plain.read_text() == f"# someone else's notes\n\n{eb.BEGIN}\n## gen\n{eb.END}\n"


def test_a_report_against_its_bucket() -> None:
    refused = eb.Refusals(exhausted=1490, with_retry_after=1490, detail_types=["QuotaFailure"])
    s = Samples([0.003] * 759, collections.Counter({"RESOURCE_EXHAUSTED": 1490, "INTERNAL": 1}))
    exp = eb.expected_admitted(50, 10, 2249 / 150)
    r = eb.a_report(s, refused, 2250, exp)
    assert r["admitted"] == 759 and r["within_tolerance"] and r["retry_after_on_all"]
    assert r["admitted_error"] == pytest.approx(759 / exp - 1)
    assert not r["excess_exhausted"]  # 1 of the 1491 not admitted was not a refusal
    assert r["errors"] == {"RESOURCE_EXHAUSTED": 1490, "INTERNAL": 1}
    # Split into 3 blocks, each starting with a full bucket: 3 bursts, 3 shorter spans.
    three = 3 * eb.expected_admitted(50, 10, 749 / 150)
    assert three == pytest.approx(30 + 50 * 3 * 749 / 150)


def _exhausted(trailers: tuple[tuple[str, str], ...]) -> grpc.aio.AioRpcError:
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), "x")


async def test_refusals_count_retry_after_through_the_wrapper() -> None:
    r = eb.Refusals()
    errors = iter([_exhausted((("retry-after", "1"),)), _exhausted(())])

    async def refused() -> bytes:
        raise next(errors)

    call = r.wrap(refused)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):  # still raised: loadgen counts it
            await call()
    unavailable = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
    )
    r.record(unavailable)
    assert (r.exhausted, r.with_retry_after, r.detail_types) == (2, 1, [])


def test_cli_defaults_match_the_issue() -> None:
    a = eb.build_parser().parse_args([])
    assert (a.a_rps, a.a_burst, a.a_factor, a.b_rps) == (50, 10, 3, 50)
    assert a.concurrency == [1, 8] and a.repeats == 3 and a.quota is True
    assert 10 <= a.phase <= 15
