"""Router CPU per Predict, nothing else in the way: h2load straight at one router.

Starts Triton + one router (plaintext, tenant from the header, canary probes
off; the SQLite online store, or a fresh Redis with ``--online-store redis``) on
loopback, then replays one serialized ``fraud:prod`` Predict (one
account: 30 Feast features + 3 request-time ones) with h2load (``--concurrency``
clients, default 1) on the HTTP/1.1 fast lane and on the gRPC port, ``--repeats``
times each, and reads the router's CPU from ``/proc``. This is the loop used to profile and cut
the router (docs/benchmarks.md, "What else was cut"); no Envoy, no TLS.

    python -m bench.router_cpu --build build
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.h2load import grpc_frame
from bench.loadgen import ROUTER_METHOD, router_request


def main(argv: list[str] | None = None) -> int:
    from scripts.stack import ROOT, Stack, group_cpu_seconds

    p = argparse.ArgumentParser(prog="python -m bench.router_cpu", description=__doc__)
    p.add_argument("--build", type=Path, default=Path("build"))
    p.add_argument("--requests", type=int, default=8000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--env", nargs="*", default=[], help="extra router settings, KEY=VALUE")
    p.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite")
    p.add_argument("--concurrency", type=int, default=1, help="h2load clients (1 stream each)")
    args = p.parse_args(argv)
    env = {"INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0"}
    env |= dict(kv.split("=", 1) for kv in args.env)
    logs = args.build.resolve() / "logs" / time.strftime("router-cpu-%H%M%S")
    stack = Stack(
        args.build,
        logs,
        routing_table=ROOT / "scripts" / "demo_routing.yaml",
        router_env=env,
        online_store=args.online_store,
    )
    results: dict[str, list[float]] = {"fast lane (HTTP/1.1)": [], "gRPC port": []}
    rates: dict[str, list[float]] = {k: [] for k in results}
    with stack, tempfile.TemporaryDirectory() as d:
        assert stack.router is not None
        body = router_request("fraud:prod", 42)
        raw, framed = Path(d) / "req.bin", Path(d) / "req.grpc"
        raw.write_bytes(body)
        framed.write_bytes(grpc_frame(body))
        router = stack.router
        common = ["-c", str(args.concurrency), "-m", "1", "-H", "x-inferline-tenant: demo"]
        cmds = {
            "fast lane (HTTP/1.1)": [
                *common, "--h1", "-d", str(raw), "-H", "content-type: application/x-protobuf",
                f"http://{router.bridge_address}{ROUTER_METHOD}",
            ],
            "gRPC port": [
                *common, "-d", str(framed), "-H", "content-type: application/grpc",
                "-H", "te: trailers", f"http://{router.address}{ROUTER_METHOD}",
            ],
        }  # fmt: skip
        for _ in range(args.repeats):
            for name, cmd in cmds.items():
                c0 = group_cpu_seconds(router.pid)  # the router's process group
                out = subprocess.run(
                    ["h2load", "-n", str(args.requests), *cmd],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                cpu = group_cpu_seconds(router.pid) - c0
                ok = int(re.search(r"(\d+) succeeded", out).group(1))  # type: ignore[union-attr]
                results[name].append(1e6 * cpu / max(ok, 1))
                rates[name].append(float(re.search(r"([\d.]+) req/s", out).group(1)))  # type: ignore[union-attr]
                print(
                    f"{name}: {ok} ok, {rates[name][-1]:,.0f} rps, "
                    f"{results[name][-1]:.0f} us router CPU / request"
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


if __name__ == "__main__":
    raise SystemExit(main())
