"""What the edge costs, and whether it keeps tenants apart: two benchmarks, full stack.

The paths to the model and their meters are in ``bench.chain`` (shared with
``bench.overhead``).

Each starts its own ``FullStack`` (Triton, router in edge mode behind mTLS, Envoy + xDS
+ rate-limit service + Redis) on loopback with its own tenants file (in the log dir;
``envoy/tenants.yaml`` is only read), runs, and stops it.

``overhead``: one Predict (fraud:prod, one account), closed loop, four ways in
alternating blocks of one run, so drift on a shared host hits all alike: *edge*
(demo's cert -> Envoy -> router; no quota, so no rate-limit call), *edge+quota*
(payments: one ShouldRateLimit per call), *router* (direct, with the edge's client
cert and the XFCC element Envoy would forward), *triton* (ModelInfer: the floor).

``noisy``: tenant A (payments, small bucket) sends 3x its rate evenly while tenant B
(demo) sends Poisson load, both open loop; B alone vs A + B with the same B schedule,
phase order alternating. The client is kept cheap (it shares the 2 cores): one
process, uvloop, requests serialized once, bytes in and out.

    python -m bench.edge_bench --json build/bench/edge.json --md docs/benchmarks.md
    python -m bench.edge_bench --render build/bench/edge.json --md docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import copy
import dataclasses
import functools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

import bench.loadgen as lg
from bench.chain import CpuWatch, endpoints, machine_info, median_deltas, process_groups

BIG_BUCKET = {"requests_per_second": 100_000, "burst": 100_000}
BIG_QUOTA = 100_000_000  # per minute: called on every request, never reached
TOLERANCE = 0.10  # A's admitted count vs what its bucket allows
P99_TARGET = 1.5  # B's p99 with the neighbour / alone
BEGIN, END = "<!-- edge_bench:begin -->", "<!-- edge_bench:end -->"
PKI_TENANTS = [("demo", "cli"), ("payments", "checkout")]


def overhead_tenants(base: dict[str, Any]) -> dict[str, Any]:
    """Buckets that never limit; demo without a quota, payments with one never reached.

    A quota-free tenant makes Envoy skip the rate-limit service (no descriptor), so the
    two tenants, measured in the same run, separate Envoy + mTLS from the quota call."""
    cfg = copy.deepcopy(base)
    for tid, tenant in cfg["tenants"].items():
        tenant["rate_limit"] = dict(BIG_BUCKET)
        tenant["quota_per_minute"] = BIG_QUOTA if tid == "payments" else 0
    return cfg | {"version": "bench-overhead"}


def noisy_tenants(base: dict[str, Any], a_rps: float, a_burst: int, quota: bool) -> dict[str, Any]:
    """The shipped tenants with payments' bucket shrunk; quotas kept as shipped, or dropped."""
    cfg = copy.deepcopy(base)
    cfg["tenants"]["payments"]["rate_limit"] = {"requests_per_second": a_rps, "burst": a_burst}
    for tenant in cfg["tenants"].values():
        tenant["quota_per_minute"] = tenant.get("quota_per_minute", 0) if quota else 0
    return cfg | {"version": "bench-noisy"}


def expected_admitted(rps: float, burst: int, span_s: float) -> float:
    """What a full token bucket lets through under overload from first to last send."""
    return burst + rps * span_s


def within_tolerance(admitted: float, expected: float, tol: float = TOLERANCE) -> bool:
    return abs(admitted - expected) <= tol * expected


def phase_summary(s: lg.Samples, cpu: Sequence[dict[str, float]] = ()) -> dict[str, Any]:
    """B's figures for one phase; CPU is the mean over its equal-length blocks."""
    out = lg.summarize(s)
    out["sent"] = sent = out["ok"] + out["error_count"]
    out["success_rate"] = out["ok"] / sent if sent else float("nan")
    return out | ({"cpu": {k: statistics.mean(c[k] for c in cpu) for k in cpu[0]}} if cpu else {})


NOISY_FIGURES = (  # noqa: SIM905 - a list literal of these is 14 lines
    "alone.latency_ms.p50 alone.latency_ms.p99 noisy.latency_ms.p50 noisy.latency_ms.p99 "
    "p99_ratio alone.success_rate noisy.success_rate A.admitted A.expected "
    "A.resource_exhausted alone.cpu.others_busy_pct noisy.cpu.others_busy_pct"
).split()


def noisy_median(repeats: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median over repeats of each figure the issue asks about, keyed by its path."""
    return {p: statistics.median(float(_dig(r, p)) for r in repeats) for p in NOISY_FIGURES}


def _dig(d: Any, path: str) -> Any:
    return functools.reduce(lambda x, k: x[k], path.split("."), d)


def noisy_checks(repeats: Sequence[dict[str, Any]]) -> dict[str, bool]:
    """The issue's conditions: on every repeat, except B's p99 ratio (median of repeats)."""
    a, b = [r["A"] for r in repeats], [r[p] for r in repeats for p in ("alone", "noisy")]
    return {
        "A admitted within 10% of its bucket": all(x["within_tolerance"] for x in a),
        "all of A's excess refused RESOURCE_EXHAUSTED": all(x["excess_exhausted"] for x in a),
        "every refusal carries retry-after": all(x["retry_after_on_all"] for x in a),
        "B 100% success, both phases": all(x["success_rate"] == 1.0 for x in b),
        "B p99 with A <= 1.5x alone": noisy_median(repeats)["p99_ratio"] <= P99_TARGET,
    }


# The quota filter's counters, on the router clusters' stats: Predict goes to
# the fast-lane cluster, the other methods to the gRPC one.
RATELIMIT_STATS = r"cluster\.router(_fast)?\.ratelimit\."


async def run_overhead(full: Any, pki: Any, args: argparse.Namespace) -> dict[str, Any]:
    eps = endpoints(full, pki)
    names = [e.name for e in eps]
    levels: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        calls = {e.name: await e.connect(stack, args.timeout) for e in eps}
        rl0 = full.edge.envoy.stats(RATELIMIT_STATS)
        for conc in args.concurrency:
            for n in names:
                await lg.closed_loop(calls[n], conc, duration_s=args.warmup)
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
            per_block = args.duration / args.blocks
            for _ in range(args.repeats):
                acc = {n: lg.Samples() for n in names}
                for order in lg.block_order(names, args.blocks):
                    for n in order:
                        watch = CpuWatch(process_groups(full))
                        s = await lg.closed_loop(calls[n], conc, duration_s=per_block)
                        cpu = watch.stop()
                        s.client_cpu_s = cpu["client_s"]
                        s.server_cpu_s = {k: cpu[f"{k}_s"] for k in process_groups(full)}
                        acc[n].merge(s)
                for n in names:
                    runs[n].append(lg.summarize(acc[n]))
            tgt = {n: {"median": lg.median_summary(r), "repeats": r} for n, r in runs.items()}
            levels[f"c{conc}"] = {
                "concurrency": conc,
                "targets": tgt,
                "deltas": {
                    "envoy_mtls": median_deltas(runs, "edge", "router"),
                    "quota_call": median_deltas(runs, "edge+quota", "edge"),
                    "router": median_deltas(runs, "router", "triton"),
                },
            }
            print(f"concurrency {conc}: {json.dumps(levels[f'c{conc}']['deltas'])}", flush=True)
        rl1 = full.edge.envoy.stats(RATELIMIT_STATS)
    rl = {k: v - rl0.get(k, 0) for k, v in rl1.items() if v != rl0.get(k, 0)}
    keys = ("concurrency", "duration", "blocks", "repeats", "warmup", "timeout")
    return {
        "benchmark": "overhead",
        "plan": {k: getattr(args, k) for k in keys},
        "levels": levels,
        "envoy_ratelimit_stats_delta": rl,
    }


async def _open(call: lg.Call, offsets: np.ndarray) -> lg.Samples:
    return await lg.open_loop(call, offsets, late_s=0.002, max_inflight=1000)


@dataclasses.dataclass
class Refusals:
    """What the noisy tenant got back when refused (parsed only when refused: cheap)."""

    exhausted: int = 0
    with_retry_after: int = 0
    detail_types: list[str] = dataclasses.field(default_factory=list)

    def record(self, e: grpc.aio.AioRpcError) -> None:
        from grpc_status import rpc_status

        if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            return
        self.exhausted += 1
        self.with_retry_after += bool(dict(e.trailing_metadata() or ()).get("retry-after"))
        if not self.detail_types:  # one sample: QuotaFailure + RetryInfo expected
            status = rpc_status.from_call(e)
            details = status.details if status is not None else []
            self.detail_types = sorted(d.type_url.rsplit(".", 1)[-1] for d in details)

    def wrap(self, call: lg.Call) -> lg.Call:
        async def counted() -> bytes:
            try:
                return await call()
            except grpc.aio.AioRpcError as e:
                self.record(e)
                raise

        return counted


def a_report(s: lg.Samples, refused: Refusals, sent: int, expected: float) -> dict[str, Any]:
    """Tenant A's side: admitted vs what its bucket allows, and how the rest was refused."""
    ok = len(s.latencies_s)
    return {
        "sent": sent,
        "admitted": ok,
        "expected": expected,
        "admitted_error": ok / expected - 1,
        "within_tolerance": within_tolerance(ok, expected),
        "errors": dict(s.errors),
        "resource_exhausted": refused.exhausted,
        "with_retry_after": refused.with_retry_after,
        "detail_types": refused.detail_types,
        "excess_exhausted": refused.exhausted == sent - ok,
        "retry_after_on_all": refused.with_retry_after == refused.exhausted,
    }


async def run_noisy(full: Any, pki: Any, args: argparse.Namespace) -> dict[str, Any]:
    eps = {e.name: e for e in endpoints(full, pki)}  # edge = demo's cert, edge+quota = payments'
    a_ep = dataclasses.replace(eps["edge+quota"], name="A payments")
    b_ep = dataclasses.replace(eps["edge"], name="B demo")
    block_s, a_rate = args.phase / args.blocks, args.a_rps * args.a_factor
    a_offsets = np.arange(round(a_rate * block_s)) / a_rate  # even: a steady overload
    a_expected = args.blocks * expected_admitted(args.a_rps, args.a_burst, float(a_offsets[-1]))
    rng = np.random.default_rng(args.seed)
    repeats: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        a_plain, b_call = [await e.connect(stack, args.timeout) for e in (a_ep, b_ep)]
        await _open(b_call, lg.arrival_offsets(args.b_rps, args.warmup, poisson=True, rng=rng))
        for i in range(args.repeats):  # phase order alternates across blocks and repeats
            orders = list(lg.block_order(["alone", "noisy"], (i + 1) * args.blocks))
            b_s = {"alone": lg.Samples(), "noisy": lg.Samples()}
            a_s, refused = lg.Samples(), Refusals()
            cpu: dict[str, list[dict[str, float]]] = {"alone": [], "noisy": []}
            for order in orders[-args.blocks :]:
                b_offsets = lg.arrival_offsets(args.b_rps, block_s, poisson=True, rng=rng)
                for phase in order:  # B gets the same schedule alone and with A
                    await asyncio.sleep(1.0)  # in-flight calls drained; A's bucket full again
                    watch = CpuWatch(process_groups(full))
                    if phase == "alone":
                        b_s[phase].merge(await _open(b_call, b_offsets))
                    else:
                        a_run = _open(refused.wrap(a_plain), a_offsets)
                        b_blk, a_blk = await asyncio.gather(_open(b_call, b_offsets), a_run)
                        b_s[phase].merge(b_blk)
                        a_s.merge(a_blk)
                    cpu[phase].append(watch.stop())
            rec: dict[str, Any] = {"order": [p for o in orders[-args.blocks :] for p in o]}
            rec["A"] = a_report(a_s, refused, args.blocks * len(a_offsets), a_expected)
            for p, s in b_s.items():
                rec[p] = phase_summary(s, cpu[p])
            rec["p99_ratio"] = rec["noisy"]["latency_ms"]["p99"] / rec["alone"]["latency_ms"]["p99"]
            repeats.append(rec)
            print(noisy_row(i + 1, rec), flush=True)
    keys = ("a_rps", "a_burst", "a_factor", "b_rps", "phase", "blocks", "repeats", "quota")
    return {
        "benchmark": "noisy",
        "plan": {k: getattr(args, k) for k in keys},
        "repeats": repeats,
        "median": noisy_median(repeats),
        "checks": noisy_checks(repeats),
    }


def _overhead_md(r: dict[str, Any]) -> list[str]:
    cols = ("envoy", "router", "ratelimit", "triton", "client")
    _row = lambda *cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    out = [
        _row("load", "path", "throughput", "p50", "p95", "p99", *(f"{c} CPU" for c in cols)),
        _row(*["---"] * 11),
    ]
    labels = {"envoy_mtls": "Envoy + mTLS (edge - router)", "quota_call": "quota call"}
    labels["router"] = "router + features (router - triton)"
    for lvl in r["levels"].values():
        load = f"concurrency {lvl['concurrency']}"
        for name, t in lvl["targets"].items():
            m, lat = t["median"], t["median"]["latency_ms"]
            cpu = [f"{m.get(f'{c}_cpu_ms_per_req', float('nan')):.3f}" for c in cols]
            pct = [f"{lat[k]:.2f} ms" for k in ("p50", "p95", "p99")]
            out.append(_row(load, name, f"{m['throughput_rps']:,.0f} rps", *pct, *cpu))
            load = ""
        for key, label in labels.items():
            d = lvl["deltas"][key]
            pct = [f"**{d[k]:+.2f} ms**" for k in ("p50_ms", "p95_ms", "p99_ms")]
            out.append(_row("", f"**{label}**", "", *pct, *[""] * 5))
    calls = json.dumps(r["envoy_ratelimit_stats_delta"])
    return [*out, "", f"Envoy's quota-filter counters over the whole run: `{calls}`."]


NOISY_HEAD = (
    "| repeat | order | B p99 alone | B p99 with A | ratio | B OK (alone + with A) | A sent "
    "| A admitted | expected | A RESOURCE_EXHAUSTED (with retry-after) | others' CPU (alone "
    "/ with A) |\n" + "| --- " * 11 + "|"
)


def noisy_row(i: int, x: dict[str, Any]) -> str:
    """One repeat as a table row (also the progress line while running)."""
    a, al, no = x["A"], x["alone"], x["noisy"]
    return (
        f"| {i} | {', '.join({'alone': 'B', 'noisy': 'A+B'}[p] for p in x['order'])} | "
        f"{al['latency_ms']['p99']:.2f} ms | "
        f"{no['latency_ms']['p99']:.2f} ms | {x['p99_ratio']:.2f}x | {al['ok']}/{al['sent']} + "
        f"{no['ok']}/{no['sent']} | {a['sent']} | {a['admitted']} | {a['expected']:.1f} "
        f"({a['admitted_error']:+.1%}) | {a['resource_exhausted']} ({a['with_retry_after']}) | "
        f"{al['cpu']['others_busy_pct']:.0f}% / {no['cpu']['others_busy_pct']:.0f}% |"
    )


def _noisy_md(r: dict[str, Any]) -> list[str]:
    m, types = r["median"], ", ".join(r["repeats"][0]["A"]["detail_types"]) or "none"
    return [
        NOISY_HEAD,
        *(noisy_row(i, x) for i, x in enumerate(r["repeats"], 1)),
        f"| **median** | | **{m['alone.latency_ms.p99']:.2f} ms** | "
        f"**{m['noisy.latency_ms.p99']:.2f} ms** | **{m['p99_ratio']:.2f}x** | | | "
        f"{m['A.admitted']:.0f} | {m['A.expected']:.1f} | {m['A.resource_exhausted']:.0f} | "
        f"{m['alone.cpu.others_busy_pct']:.0f}% / {m['noisy.cpu.others_busy_pct']:.0f}% |",
        "",
        f"B p50 alone {m['alone.latency_ms.p50']:.2f} ms, with A "
        f"{m['noisy.latency_ms.p50']:.2f} ms (medians). Details on a sampled refusal: {types}.",
        "",
        *(f"- {k}: {'pass' if ok else '**MISS**'}" for k, ok in r["checks"].items()),
    ]


def render_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The section for docs/benchmarks.md: machine, command, one table per benchmark."""
    lines = ["## Edge: what Envoy + mTLS adds, and noisy-neighbour isolation (issue 3)", ""]
    for r in results:
        mc, overhead = r["machine"], r["benchmark"] == "overhead"
        v = ", ".join(f"{k} {x}" for k, x in mc["versions"].items())
        lines += [
            f"### {'Envoy + mTLS overhead' if overhead else 'Noisy neighbour'}",
            "",
            f"Machine: {mc['label']}: {mc['cpus']} vCPU, {mc['mem_gib']} GiB, "
            f"{mc['os']}, Python {mc['python']}, {v}; {mc['date']}; load average at start "
            f"{' '.join(mc['loadavg_start'])}.",
            "",
            f"    {r['command']}",
            "",
            f"Plan: `{json.dumps(r['plan'])}`.",
            "",
            *(_overhead_md(r) if overhead else _noisy_md(r)),
            "",
        ]
    return "\n".join(lines)


def write_markdown(path: Path, text: str) -> None:
    """Replace the generated block between markers; hand-written text around it stays."""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}\n"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, _, rest = old.partition(BEGIN)
        block = head + block + rest.partition(END)[2].removeprefix("\n")
    elif old:
        block = old.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block)


def run_with_stack(args: argparse.Namespace, which: str) -> dict[str, Any]:
    """Start a FullStack with this benchmark's tenants file, run the benchmark, stop it."""
    import uvloop

    args = argparse.Namespace(**vars(args))  # this benchmark's defaults, not the caller's
    args.blocks = args.blocks or (4 if which == "overhead" else 1)

    from inferline_edge.certs import DevPKI
    from scripts.edge_stack import DEFAULT_TENANTS, FullStack

    name = f"edge-bench-{which}-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir = ((args.log_dir or args.build / "logs") / name).resolve()
    pki = DevPKI.create(log_dir / "pki", tenants=PKI_TENANTS, days=1)
    base = yaml.safe_load(DEFAULT_TENANTS.read_text())
    cfg = (
        overhead_tenants(base)
        if which == "overhead"
        else noisy_tenants(base, args.a_rps, args.a_burst, args.quota)
    )
    tenants = log_dir / "tenants.yaml"
    tenants.write_text(yaml.safe_dump(cfg, sort_keys=False))
    full = FullStack(args.build, log_dir, pki, tenants=tenants)
    machine = machine_info(args.machine)
    # Started from a worker thread: no preexec_fn there, so no fork after this process
    # has used gRPC (grpc's fork handler hangs; docs/edge.md, "Traps met").
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(full.start).result()
    try:
        print(f"stack up ({which}), logs in {log_dir}", flush=True)
        body = run_overhead if which == "overhead" else run_noisy
        result: dict[str, Any] = uvloop.run(body(full, pki, args))
    finally:
        full.stop()
    return result | {"machine": machine, "tenants": cfg, "log_dir": str(log_dir)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.edge_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("benchmarks", nargs="*", help="overhead and/or noisy (default: both)")
    p.add_argument("--render", nargs="+", type=Path, metavar="JSON", help="only render these")
    p.add_argument("--build", type=Path, default=Path("build"))
    p.add_argument("--log-dir", type=Path, help="default: <build>/logs")
    p.add_argument("--machine", default="2 vCPU dev VM, shared")
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path, help="e.g. docs/benchmarks.md")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--blocks", type=int, help="alternating blocks per repeat (4; noisy: 1)")
    p.add_argument("--warmup", type=float, default=2.0, help="s, per path / for B")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, s")
    g = p.add_argument_group("overhead")
    g.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    g.add_argument("--duration", type=float, default=6.0, help="s per path per repeat")
    g = p.add_argument_group("noisy neighbour")
    g.add_argument("--a-rps", type=float, default=50.0, help="A's token bucket rate")
    g.add_argument("--a-burst", type=int, default=10)
    g.add_argument("--a-factor", type=float, default=3.0, help="A sends this x its rate")
    g.add_argument("--b-rps", type=float, default=50.0)
    g.add_argument("--phase", type=float, default=15.0, help="s per phase per repeat")
    g.add_argument("--no-quota", dest="quota", action="store_false", help="drop all quotas")
    g.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        results = [r for f in args.render for r in json.loads(f.read_text())["results"]]
    else:
        which = args.benchmarks or ["overhead", "noisy"]
        if bad := set(which) - {"overhead", "noisy"}:
            sys.exit(f"unknown benchmark(s): {', '.join(sorted(bad))}")
        command = " ".join(["python -m bench.edge_bench", *(argv or sys.argv[1:])])
        results = [run_with_stack(args, w) | {"command": command} for w in which]
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")
            print(f"wrote {args.json}")
    text = render_markdown(results)
    print(text)
    if args.md:
        write_markdown(args.md, text)
        print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
