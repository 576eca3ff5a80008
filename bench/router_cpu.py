"""Router CPU per Predict, nothing else in the way: h2load straight at one router.

Starts Triton + one router (plaintext, tenant from the header, canary probes
off; the SQLite online store, or a fresh Redis with ``--online-store redis``) on
loopback, then replays one serialized ``fraud:prod`` Predict (one
account: 30 Feast features + 3 request-time ones) with h2load (``--concurrency``
clients, default 1) on the HTTP/1.1 fast lane (the bare message, and gRPC's
framing as the edge sends it) and on the gRPC port, ``--repeats`` times each,
and reads the router's CPU from ``/proc``. This is the loop used to profile and
cut the router (docs/benchmarks.md, "What else was cut"); no Envoy, no TLS.

``--against REV`` measures a code change instead: this tree's router and one
started from a git worktree of REV, on one Triton, in alternating runs; a
directory instead of REV runs the router package under it (``bench.compiled_tree``
builds one compiled by mypyc). ``--against .`` with ``--allocator`` and
``--against-allocator`` compares memory allocators (scripts/allocator.py) on the
same code, and with ``--against-python`` interpreters; run it both ways round,
as the two routers' slots differ slightly.

    python -m bench.router_cpu --build build
    python -m bench.router_cpu --build build --against 818c0d6 --repeats 7 --requests 4000
    python -m bench.router_cpu --build build --against . --against-allocator system
    python -m bench.router_cpu --build build --against . --allocator system --against-allocator auto
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import perf_profile
from bench.h2load import grpc_frame, run_for_cpu
from bench.loadgen import ROUTER_METHOD, router_request
from scripts.allocator import MODES, Allocator

if TYPE_CHECKING:
    from scripts.stack import OnlineStore


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.router_cpu", description=__doc__)
    p.add_argument("--build", type=Path, default=Path("build"))
    p.add_argument("--requests", type=int, default=8000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--env", nargs="*", default=[], help="extra router settings, KEY=VALUE")
    p.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite")
    p.add_argument("--concurrency", type=int, default=1, help="h2load clients (1 stream each)")
    p.add_argument(
        "--against",
        metavar="REV|DIR",
        help="fast lane only: this router vs one started from git revision REV (or from "
        "the router package under DIR, e.g. bench.compiled_tree's), side by side",
    )
    p.add_argument(
        "--against-env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the --against router only (with --against . it compares a "
        "process setting on the same code)",
    )
    p.add_argument(
        "--allocator",
        choices=MODES,
        default="auto",
        help="this tree's router's allocator (scripts/allocator.py)",
    )
    p.add_argument(
        "--against-allocator",
        choices=MODES,
        default="auto",
        help="the --against router's allocator",
    )
    p.add_argument(
        "--against-python",
        type=Path,
        metavar="EXE",
        help="the --against router's interpreter (a venv's python holding the router's "
        "dependencies); with --against . it compares interpreters on the same code",
    )
    p.add_argument(
        "--perf",
        action="store_true",
        help="after the runs, sample the router with `perf record` over one more fast-lane "
        "run and print its CPU by shared object (interpreter, kernel, sqlite, ...)",
    )
    args = p.parse_args(argv)
    if args.against:
        return against(args)
    stack, _ = _stack(
        args.build,
        "router-cpu",
        env=args.env,
        online_store=args.online_store,
        allocator=args.allocator,
    )
    results: dict[str, list[float]] = {
        "fast lane (HTTP/1.1)": [],
        "fast lane, gRPC framing": [],
        "gRPC port": [],
    }
    rates: dict[str, list[float]] = {k: [] for k in results}
    with stack, tempfile.TemporaryDirectory() as d:
        assert stack.router is not None
        body = router_request("fraud:prod", 42)
        raw, framed = Path(d) / "req.bin", Path(d) / "req.grpc"
        raw.write_bytes(body)
        framed.write_bytes(grpc_frame(body))
        router = stack.router
        common = _common(args.concurrency)
        cmds = {
            "fast lane (HTTP/1.1)": _fast_lane(router, raw, args.concurrency),
            # What the edge sends since 11-29: the gRPC request as is, the status
            # back in HTTP/1.1 trailers (router/transport/h1_framing.py).
            "fast lane, gRPC framing": [
                *common, "--h1", "-d", str(framed), "-H", "content-type: application/grpc",
                f"http://{router.bridge_address}{ROUTER_METHOD}",
            ],
            "gRPC port": [
                *common, "-d", str(framed), "-H", "content-type: application/grpc",
                "-H", "te: trailers", f"http://{router.address}{ROUTER_METHOD}",
            ],
        }  # fmt: skip
        for _ in range(args.repeats):
            for name, cmd in cmds.items():
                run = run_for_cpu(router.pid, ["-n", str(args.requests), *cmd])
                ok = run.result.succeeded
                results[name].append(run.cpu_us_per_request)
                rates[name].append(run.result.req_per_s)
                print(
                    f"{name}: {ok} ok, {rates[name][-1]:,.0f} rps, "
                    f"{results[name][-1]:.0f} us router CPU / request"
                )
        if args.perf:
            print(
                perf_by_object(
                    router.pid,
                    ["h2load", "-n", str(args.requests), *cmds["fast lane (HTTP/1.1)"]],
                    Path(d) / "perf.data",
                )
            )
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M %Z')}; {args.online_store}; "
        f"concurrency {args.concurrency}; medians of {args.repeats}"
    )
    print("| router port | throughput | router CPU / request |\n| --- | --- | --- |")
    for name, v in results.items():
        rps = statistics.median(rates[name])
        print(f"| {name} | {rps:,.0f} rps | {statistics.median(v):.0f} us |")
    return 0


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _stack(
    build: Path,
    name: str,
    *,
    env: Sequence[str] = (),
    online_store: OnlineStore = "sqlite",
    allocator: Allocator = "auto",
    with_router: bool = True,
) -> tuple[Any, dict[str, str]]:
    """Triton + one router (unless ``with_router`` is False) as the benchmark runs
    them, and the router's settings (``env``: extra KEY=VALUE)."""
    from scripts.stack import ROOT, Stack

    settings = {"INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0"}
    settings |= dict(kv.split("=", 1) for kv in env)
    stack = Stack(
        build,
        build.resolve() / "logs" / time.strftime(f"{name}-%H%M%S"),
        routing_table=ROOT / "scripts" / "demo_routing.yaml",
        router_env=settings,
        online_store=online_store,
        router_allocator=allocator,
        with_router=with_router,
    )
    return stack, settings


def _common(concurrency: int) -> list[str]:
    return ["-c", str(concurrency), "-m", "1", "-H", "x-inferline-tenant: demo"]


def _fast_lane(router: Any, body: Path, concurrency: int) -> list[str]:
    """h2load's arguments for the serialized request on the router's HTTP/1.1 lane."""
    return [
        *_common(concurrency), "--h1", "-d", str(body),
        "-H", "content-type: application/x-protobuf",
        f"http://{router.bridge_address}{ROUTER_METHOD}",
    ]  # fmt: skip


def perf_by_object(pid: int, load: list[str], data: Path, top: int = 12) -> str:
    """``perf record`` on the router while ``load`` runs, as a share per shared
    object (bench.perf_profile)."""
    with perf_profile.recording(pid, data):
        subprocess.run(load, capture_output=True, check=True)
    return perf_profile.table(perf_profile.shares(data), ("shared object", "router CPU"), top=top)


def against(args: argparse.Namespace) -> int:
    """This tree's router and REV's, on one Triton, in alternating h2load runs of
    the fast lane: the ratio of their CPU per request survives the VM's drift
    between runs, which comparing two separate runs does not (~10%)."""
    from scripts.stack import ROOT, RouterProcess

    stack, env = _stack(
        args.build,
        "router-cpu-ab",
        env=args.env,
        online_store=args.online_store,
        allocator=args.allocator,
        with_router=False,  # both routers start below, alike
    )
    logs = stack.log_dir
    with tempfile.TemporaryDirectory() as d, stack:
        given = Path(args.against)
        tree = given.resolve() if given.is_dir() else Path(d) / "rev"
        git = ["git", "-C", str(ROOT)]
        if not given.is_dir():
            subprocess.run(
                [*git, "worktree", "add", "--detach", str(tree), args.against], check=True
            )
        try:
            assert stack.triton is not None
            router_env = {  # as Stack.start configures its router
                "INFERLINE_TRITON__URL": stack.triton.grpc_url,
                "INFERLINE_TRITON__HTTP_URL": stack.triton.http_url,
                "INFERLINE_FEATURES__REPO_PATH": str(stack.feast_repo),
                "INFERLINE_MODELS__REPOSITORY": str(args.build.resolve() / "model_repository"),
                "INFERLINE_ROUTING__TABLE_PATH": str(stack.routing_table),
                **env,
            }
            against_env = router_env | dict(kv.split("=", 1) for kv in args.against_env)

            def boot(root: Path, python: Path | None = None) -> list[str]:
                # Both routers start alike (same launcher, same command shape):
                # with this tree's router started by Stack instead, A/A runs
                # (``--against .``) read 1.04-1.08; started alike, 0.99.
                return [
                    str(python or sys.executable),
                    "-c",
                    f"import sys; sys.path.insert(0, {str(root)!r}); import runpy; "
                    "runpy.run_module('router', run_name='__main__')",
                ]

            for name in ("this", tree.name):
                (logs / name).mkdir(parents=True, exist_ok=True)
            with (
                RouterProcess(
                    router_env, logs / "this", command=boot(ROOT), allocator=args.allocator
                ) as new,
                RouterProcess(
                    against_env,
                    logs / tree.name,
                    command=boot(tree, args.against_python),
                    allocator=args.against_allocator,
                ) as old,
            ):
                raw = Path(d) / "req.bin"
                raw.write_bytes(router_request("fraud:prod", 42))
                routers = {"this tree": new, args.against: old}
                cpu: dict[str, list[float]] = {k: [] for k in routers}

                def run(router: RouterProcess, n: int) -> float:
                    h2 = ["-n", str(n), *_fast_lane(router, raw, args.concurrency)]
                    return run_for_cpu(router.pid, h2).cpu_us_per_request

                for r in routers.values():
                    run(r, 1500)  # warm-up
                for i in range(args.repeats):
                    names = list(routers) if i % 2 == 0 else list(routers)[::-1]
                    for name in names:
                        cpu[name].append(run(routers[name], args.requests))
                        print(f"{name}: {cpu[name][-1]:.0f} us router CPU / request")
                rss = {name: rss_mib(r.pid) for name, r in routers.items()}
        finally:
            if not given.is_dir():
                subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=False)
    mine, ref = (statistics.median(v) for v in cpu.values())
    print(
        "resident memory after the runs: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in rss.items())
    )
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M %Z')}; {args.online_store}; concurrency "
        f"{args.concurrency}; {args.repeats} alternating runs of {args.requests}"
    )
    print(
        f"| this tree ({args.allocator} allocator) | {args.against} "
        f"({args.against_allocator} allocator) | ratio |\n| --- | --- | --- |"
    )
    print(f"| {mine:.0f} us | {ref:.0f} us | {mine / ref:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
