"""Issue 7's overhead targets, the whole chain against direct Triton in one run.

Starts one ``FullStack`` (Triton, router in edge mode, Envoy + xDS + rate-limit
service + Redis) on loopback, tenants with buckets that never limit and no
quota, canary probes off (every Triton inference is a measured request), then:

``latency``: the fraud GBDT, one account (30 Feast features + 3 request-time
features), closed loop at concurrency 1 from a Python client sending prebuilt
bytes, alternating blocks (A B, B A, ...) of *full* (tenant cert -> Envoy mTLS ->
router -> feature read -> Triton) and *triton* (``ModelInfer``, the same row
prebuilt). Overhead = full - triton (median over repeats of the paired
per-repeat differences). Router CPU per request comes from ``/proc`` over the
full blocks: inbound request, feature read, Triton call, response.

``throughput``: h2load (native, so the client's CPU does not hide the servers')
at ``--clients`` x ``--streams`` concurrency, alternating *full* and *triton*
runs. h2load cannot present a client certificate, so the full path enters
through Envoy's JWT listener (TLS + a signed token, the same filter chain after
authentication). Every request on either path is one Triton inference, so
Triton's own success counter checks that h2load's HTTP 200s were gRPC OKs,
and its execution counter gives the batch its dynamic batcher formed per path.

``--routers N`` puts N router processes behind Envoy (CPU summed over them) and
``--envoy-workers N`` sets Envoy's worker threads: the topology questions.

With ``--grpc-lane`` Envoy sends Predict to the router's gRPC port instead of
its HTTP/1.1 fast lane: the before/after comparison. ``--perf`` adds one more
concurrency-1 full-path run under ``perf record`` on the router: where its CPU
goes per shared object and kernel symbol, and per thread (bench.perf_profile).

    python -m bench.overhead --json build/bench/overhead.json --md docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

import bench.loadgen as lg
from bench import perf_profile
from bench.chain import CpuWatch, endpoints, machine_info, median_deltas, process_groups
from bench.h2load import grpc_frame, parse_h2load, triton_batching, triton_counts
from scripts.allocator import MODES, resolve

TARGETS = {"p50_ms": 1.0, "p99_ms": 3.0, "router_cpu_ms": 0.5, "throughput_ratio": 0.40}


class Cores:
    """``--pin``: the router on a core of its own, as a pod with whole CPUs under
    Kubernetes' static CPU manager gets. On the full path the router's process
    group runs on the last core and everything else (Envoy, its services,
    Triton, this client and the h2load it starts) on the others; the
    direct-Triton path gets every core. Without ``--pin`` nothing is pinned."""

    def __init__(self, full: Any, enabled: bool) -> None:
        self.enabled = enabled
        n = os.cpu_count() or 1
        self._all = set(range(n))
        self._router = {n - 1}
        self._rest = set(range(n - 1)) or self._all
        groups = process_groups(full)
        self._router_pgids = set(groups["router"])
        self._other_pgids = {g for k, gs in groups.items() if k != "router" for g in gs}

    def _apply(self, pgids: set[int], cpus: set[int]) -> None:
        from scripts.supervisor import processes

        pids = [p.pid for p in processes() if p.pgid in pgids]
        for pid in pids:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                    os.sched_setaffinity(int(tid), cpus)

    def _self(self, cpus: set[int]) -> None:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError, OSError):
                os.sched_setaffinity(int(tid), cpus)

    def path(self, name: str) -> None:
        """Arrange the cores for ``name`` ("full" or "triton") before measuring it."""
        if not self.enabled:
            return
        if name == "full":
            self._apply(self._router_pgids, self._router)
            self._apply(self._other_pgids, self._rest)
            self._self(self._rest)
        else:
            self._apply(self._router_pgids | self._other_pgids, self._all)
            self._self(self._all)


def markers(pin: bool) -> tuple[str, str]:
    """The docs block's markers: a pinned run has its own block."""
    name = "overhead-pinned" if pin else "overhead"
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def bench_tenants(base: dict[str, Any]) -> dict[str, Any]:
    """Shipped tenants with buckets that never limit and no quota calls."""
    cfg = dict(base)
    cfg["tenants"] = {
        tid: {
            **t,
            "rate_limit": {"requests_per_second": 100_000, "burst": 100_000},
            "quota_per_minute": 0,
        }
        for tid, t in base["tenants"].items()
    }
    return cfg | {"version": "bench-overhead-7"}


async def latency(full: Any, pki: Any, args: argparse.Namespace, cores: Cores) -> dict[str, Any]:
    eps = [e for e in endpoints(full, pki) if e.name in ("edge", "triton")]
    names = ["full", "triton"]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    async with contextlib.AsyncExitStack() as stack:
        calls = dict(zip(names, [await e.connect(stack, 5.0) for e in eps], strict=True))
        for n in names:
            cores.path(n)
            await lg.closed_loop(calls[n], 1, duration_s=args.warmup)
        for _ in range(args.repeats):
            acc = {n: lg.Samples() for n in names}
            for order in lg.block_order(names, args.blocks):
                for n in order:
                    cores.path(n)
                    watch = CpuWatch(process_groups(full))
                    s = await lg.closed_loop(calls[n], 1, duration_s=args.duration / args.blocks)
                    cpu = watch.stop()
                    s.client_cpu_s = cpu["client_s"]
                    s.server_cpu_s = {k: cpu[f"{k}_s"] for k in process_groups(full)}
                    acc[n].merge(s)
            for n in names:
                runs[n].append(lg.summarize(acc[n]))
            print(f"latency repeat: {json.dumps(median_deltas(runs, 'full', 'triton'))}")
    return {
        "targets": {n: {"median": lg.median_summary(r), "repeats": r} for n, r in runs.items()},
        "overhead": median_deltas(runs, "full", "triton"),
    }


def _h2load(url: str, body: Path, headers: list[str], args: argparse.Namespace) -> list[str]:
    exe = shutil.which("h2load")
    if exe is None:
        raise FileNotFoundError("h2load not found: apt-get install -y nghttp2-client")
    cmd = [exe, f"--clients={args.clients}", f"--max-concurrent-streams={args.streams}"]
    cmd += [f"--duration={args.h2_duration:g}", f"--warm-up-time={args.h2_warmup:g}"]
    cmd += [f"--data={body}", "-H", "content-type: application/grpc", "-H", "te: trailers"]
    for h in headers:
        cmd += ["-H", h]
    return [*cmd, url]


def throughput(full: Any, pki: Any, args: argparse.Namespace, cores: Cores) -> dict[str, Any]:
    triton = full.base.triton
    token = pki.sign_jwt("demo", "bench-overhead", ttl_s=3600)
    metrics = lambda: triton.http_get("/metrics", metrics=True, timeout=5).decode()  # noqa: E731
    pgids = process_groups(full)
    out: dict[str, list[dict[str, Any]]] = {"full": [], "triton": []}
    with tempfile.TemporaryDirectory() as d:
        bodies = {"full": Path(d) / "full.grpc", "triton": Path(d) / "triton.grpc"}
        eps = {e.name: e for e in endpoints(full, pki)}
        bodies["full"].write_bytes(grpc_frame(eps["edge"].request))
        bodies["triton"].write_bytes(grpc_frame(eps["triton"].request))
        cmds = {
            "full": _h2load(
                f"https://{full.edge.jwt_address}{lg.ROUTER_METHOD}",
                bodies["full"],
                [f"authorization: Bearer {token}"],
                args,
            ),
            "triton": _h2load(
                f"http://{triton.grpc_url}{lg.TRITON_METHOD}", bodies["triton"], [], args
            ),
        }
        for order in lg.block_order(["full", "triton"], args.repeats):
            for name in order:
                cores.path(name)
                text = metrics()
                before, exec0 = triton_counts(text, "fraud"), triton_batching(text, "fraud")
                watch = CpuWatch(pgids)
                proc = subprocess.run(cmds[name], capture_output=True, text=True, check=False)
                cpu = watch.stop()
                time.sleep(2.5)  # Triton's counters lag ~2 s
                text = metrics()
                after, exec1 = triton_counts(text, "fraud"), triton_batching(text, "fraud")
                if proc.returncode != 0:
                    raise RuntimeError(f"h2load: {proc.stderr}\n{proc.stdout}")
                r = parse_h2load(proc.stdout)
                delta = {k: after[k] - before[k] for k in after}
                execs = {k: exec1[k] - exec0[k] for k in exec1}
                n = max(delta["success"], 1)
                rec = {
                    "rps": r.req_per_s,
                    "h2load_2xx": r.status_2xx,
                    "h2load_done": r.total - r.failed - r.errored - r.timeout,
                    "triton_delta": delta,
                    # What Triton's dynamic batcher made of this path's arrivals.
                    "triton_batch": delta["success"] / max(execs["exec_count"], 1),
                    "triton_queue_ms": execs["queue_duration_us"] / n / 1e3,
                    "mean_ms": r.latency_ms["mean"],
                    # CPU covers warm-up too, so per request uses Triton's count.
                    "cpu_ms_per_req": {
                        k: 1e3 * cpu[f"{k}_s"] / n for k in pgids
                    },
                }
                out[name].append(rec)
                print(f"throughput {name}: {r.req_per_s:,.0f} rps, triton {delta}", flush=True)
    med = {n: statistics.median(x["rps"] for x in v) for n, v in out.items()}
    return {
        "runs": out,
        "median_rps": med,
        "ratio": med["full"] / med["triton"],
        "commands": {n: " ".join(c[1:]) for n, c in cmds.items()},
    }


async def profile(full: Any, pki: Any, args: argparse.Namespace, cores: Cores) -> dict[str, Any]:
    """``--perf``: after the measured phases, one more full-path closed loop at
    concurrency 1 with ``perf record`` on the router (bench.perf_profile): its
    samples per shared object and per kernel symbol, and its CPU per thread."""
    pid = full.router.pid
    (edge,) = [e for e in endpoints(full, pki) if e.name == "edge"]
    async with contextlib.AsyncExitStack() as stack:
        call = await edge.connect(stack, 5.0)
        cores.path("full")
        await lg.closed_loop(call, 1, duration_s=args.warmup)
        with tempfile.TemporaryDirectory() as d:
            data = Path(d) / "perf.data"
            with perf_profile.recording(pid, data):
                before, t0 = perf_profile.thread_cpu(pid), time.monotonic()
                s = await lg.closed_loop(call, 1, duration_s=args.duration)
                wall, after = time.monotonic() - t0, perf_profile.thread_cpu(pid)
            objects = perf_profile.shares(data)
            kernel = perf_profile.shares(data, sort="sym", dso=perf_profile.KERNEL)
    n = max(lg.summarize(s)["ok"], 1)
    threads = perf_profile.thread_delta(pid, before, after)
    return {
        "requests": n,
        "wall_s": wall,
        "threads_us_per_req": {k: 1e6 * v / n for k, v in threads.items() if v > 0},
        "objects": [[x.percent, x.name] for x in objects[:12]],
        "kernel": [[x.percent, x.name] for x in kernel[:8]],
    }


def checks(r: dict[str, Any]) -> dict[str, tuple[float, float, bool]]:
    lat, tp = r["latency"], r["throughput"]
    full = lat["targets"]["full"]["median"]
    got = {
        "p50_ms": lat["overhead"]["p50_ms"],
        "p99_ms": lat["overhead"]["p99_ms"],
        "router_cpu_ms": full["router_cpu_ms_per_req"],
        "throughput_ratio": tp["ratio"],
    }
    return {
        k: (v, TARGETS[k], v >= TARGETS[k] if k == "throughput_ratio" else v <= TARGETS[k])
        for k, v in got.items()
    }


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lat, tp = r["latency"], r["throughput"]
    lane = "gRPC port (`--grpc-lane`)" if r["plan"]["grpc_lane"] else "HTTP/1.1 fast lane"
    lane += f", {r['plan'].get('online_store', 'sqlite')} online store"
    if alloc := r["plan"].get("router_allocator"):
        lane += f", router on the {alloc} allocator"
    if (n := r["plan"].get("routers", 1)) != 1:
        lane += f", {n} router processes (`--routers`)"
    if (w := r["plan"].get("envoy_workers", 2)) != 2:
        lane += f", {w} Envoy worker{'s' if w > 1 else ''} (`--envoy-workers`)"
    pin = bool(r["plan"].get("pin"))
    if pin:
        lane += "; full path with the router on a core of its own (`--pin`)"
    begin, end = markers(pin)
    rows = [
        begin,
        f"### Overhead targets: Envoy (mTLS) + router ({lane}) + feature read vs direct Triton",
        "",
        f"Machine: {m['label']}: {m['cpus']} vCPU, {m['mem_gib']} GiB, {m['os']}, Python "
        f"{m['python']}; {m['date']}; load average at start {' '.join(m['loadavg_start'])}.",
        "",
        f"    {r['command']}",
        "",
        f"Plan: `{json.dumps(r['plan'])}`.",
        "",
        "| concurrency 1 (Python client) | throughput | p50 | p95 | p99 | router CPU / req "
        "| envoy CPU / req | triton CPU / req |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, t in lat["targets"].items():
        x, ms = t["median"], t["median"]["latency_ms"]
        rows.append(
            f"| {name} | {x['throughput_rps']:,.0f} rps | {ms['p50']:.2f} ms | {ms['p95']:.2f} ms"
            f" | {ms['p99']:.2f} ms | {x.get('router_cpu_ms_per_req', 0):.3f} ms"
            f" | {x.get('envoy_cpu_ms_per_req', 0):.3f} ms"
            f" | {x.get('triton_cpu_ms_per_req', 0):.3f} ms |"
        )
    o = lat["overhead"]
    rows.append(
        f"| **overhead (full - triton)** | | **{o['p50_ms']:+.2f} ms** | **{o['p95_ms']:+.2f} ms**"
        f" | **{o['p99_ms']:+.2f} ms** | | | |"
    )
    conc = r["plan"]["clients"] * r["plan"]["streams"]
    rows += [
        "",
        f"| concurrency {conc} (h2load) | runs (rps) | median | mean latency | router CPU / req "
        "| envoy CPU / req | triton CPU / req | Triton batch / queue | Triton OK / h2load 2xx |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in tp["runs"].items():
        mid = statistics.median(x["mean_ms"] for x in runs)
        cpu = {
            k: statistics.median(x["cpu_ms_per_req"][k] for x in runs)
            for k in runs[0]["cpu_ms_per_req"]
        }
        ok = sum(x["triton_delta"]["success"] for x in runs)
        two = sum(x["h2load_2xx"] for x in runs)
        batch = "-"  # results recorded before the batch was
        if "triton_batch" in runs[0]:
            b = statistics.median(x["triton_batch"] for x in runs)
            q = statistics.median(x["triton_queue_ms"] for x in runs)
            batch = f"{b:.1f} / {q:.2f} ms"
        rows.append(
            f"| {name} | {', '.join(format(x['rps'], ',.0f') for x in runs)} | "
            f"{tp['median_rps'][name]:,.0f} rps | {mid:.2f} ms | {cpu['router']:.3f} ms | "
            f"{cpu['envoy']:.3f} ms | {cpu['triton']:.3f} ms | {batch} | {ok:,.0f} / {two:,} |"
        )
    rows += ["", f"Throughput ratio full / triton: **{tp['ratio']:.2f}**.", ""]
    rows += ["| target | measured | goal | met |", "| --- | --- | --- | --- |"]
    names = {
        "p50_ms": "p50 overhead",
        "p99_ms": "p99 overhead",
        "router_cpu_ms": "router CPU per request (c1)",
        "throughput_ratio": f"throughput at c{conc}, full / triton",
    }
    for k, (v, goal, ok) in checks(r).items():
        unit = "" if k == "throughput_ratio" else " ms"
        cmp = ">=" if k == "throughput_ratio" else "<="
        rows.append(
            f"| {names[k]} | {v:.2f}{unit} | {cmp} {goal}{unit} | {'yes' if ok else '**no**'} |"
        )
    if prof := r.get("perf"):
        rows += perf_markdown(prof)
    return "\n".join([*rows, end])


def perf_markdown(prof: dict[str, Any]) -> list[str]:
    """The ``--perf`` phase as tables: where the router's CPU went."""
    threads = ", ".join(f"{k} {v:.0f} us" for k, v in prof["threads_us_per_req"].items())
    rows = [
        "",
        f"Router under `perf record` (`--perf`: {prof['requests']:,} more full-path requests "
        f"at concurrency 1 after the runs above); its CPU per request by thread: {threads}.",
        "",
        "| shared object | router samples |",
        "| --- | --- |",
    ]
    rows += [f"| {name} | {pct:.1f}% |" for pct, name in prof["objects"]]
    rows += ["", "| kernel symbol | router samples |", "| --- | --- |"]
    rows += [f"| `{name}` | {pct:.1f}% |" for pct, name in prof["kernel"]]
    return rows


def write_md(path: Path, block: str, pin: bool) -> None:
    begin, end = markers(pin)
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from inferline_edge.certs import DevPKI
    from scripts.edge_stack import FullStack
    from scripts.stack import ROOT

    log_dir = (args.log_dir or args.build / "logs" / time.strftime("overhead-%H%M%S")).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    tenants = log_dir / "tenants.yaml"
    tenants.write_text(
        yaml.safe_dump(bench_tenants(yaml.safe_load((ROOT / "envoy" / "tenants.yaml").read_text())))
    )
    pki = DevPKI.create(
        log_dir / "pki", tenants=[("demo", "cli"), ("payments", "checkout")], days=1
    )
    full = FullStack(
        args.build,
        log_dir,
        pki,
        tenants=tenants,
        fast_lane=not args.grpc_lane,
        online_store=args.online_store,
        router_env={"INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0"},
        router_allocator=args.router_allocator,
        replicas=args.routers,
        envoy_workers=args.envoy_workers,
    )
    result: dict[str, Any] = {"machine": machine_info(args.machine)}
    keys = ("repeats", "blocks", "duration", "warmup", "clients", "streams", "h2_duration",
            "h2_warmup", "grpc_lane", "online_store", "pin", "router_allocator",
            "perf", "routers", "envoy_workers")  # fmt: skip
    result["plan"] = {k: getattr(args, k) for k in keys}
    result["plan"]["router_allocator"] = resolve(args.router_allocator)  # as on this machine
    result["command"] = "python -m bench.overhead " + " ".join(sys.argv[1:])
    with full:
        cores = Cores(full, args.pin)
        try:
            result["latency"] = asyncio.run(latency(full, pki, args, cores))
            result["throughput"] = throughput(full, pki, args, cores)
            if args.perf:
                result["perf"] = asyncio.run(profile(full, pki, args, cores))
        finally:
            cores.path("triton")  # every core again
    result["checks"] = {k: list(v) for k, v in checks(result).items()}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--build", type=Path, default=Path("build"))
    p.add_argument("--log-dir", type=Path)
    p.add_argument("--machine", default="2 vCPU dev VM")
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path, help="rewrite the overhead block of this file")
    p.add_argument("--render", type=Path, help="only render this JSON result")
    p.add_argument("--grpc-lane", action="store_true", help="Predict on the router's gRPC port")
    p.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite")
    p.add_argument(
        "--pin", action="store_true", help="full path: the router on a core of its own (Cores)"
    )
    p.add_argument(
        "--router-allocator",
        choices=MODES,
        default="auto",
        help="the router's memory allocator (scripts/allocator.py)",
    )
    p.add_argument(
        "--routers",
        type=int,
        default=1,
        help="router processes behind Envoy (each its own ports; CPU summed over them)",
    )
    p.add_argument(
        "--envoy-workers", type=int, default=2, help="Envoy's worker threads (--concurrency)"
    )
    p.add_argument(
        "--perf",
        action="store_true",
        help="then profile the router with perf over one more concurrency-1 full-path run",
    )
    g = p.add_argument_group("latency (concurrency 1)")
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--blocks", type=int, default=4)
    g.add_argument("--duration", type=float, default=8.0, help="s per path per repeat")
    g.add_argument("--warmup", type=float, default=2.0)
    g = p.add_argument_group("throughput (h2load)")
    g.add_argument("--clients", type=int, default=4)
    g.add_argument("--streams", type=int, default=8, help="per client: c = clients x streams")
    g.add_argument("--h2-duration", type=float, default=8.0)
    g.add_argument("--h2-warmup", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
    else:
        result = run(args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
    block = markdown(result)
    print(block)
    if args.md:
        write_md(args.md, block, bool(result["plan"].get("pin")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
