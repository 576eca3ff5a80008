"""What the compliance machinery costs end to end: the same requests through two
real stacks, one plain and one with PII tokenization (3 fields), the audit trail
(every prediction, fsync per batch, HMAC chain) and 1% encrypted capture.

Both stacks run at once; the measured requests alternate between them in blocks
(A B B A ...) so drift on a shared host hits both alike. Closed loop,
concurrency 1, one grpc.aio channel per stack; router CPU per request from the
router process group's CPU time.

    python -m bench.compliance_e2e --build build --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

from bench.loadgen import percentiles_ms
from bench.pii_canary import Planted, make_request, prepare
from inferline.v1 import inference_pb2_grpc
from scripts.stack import ROOT, Stack
from scripts.supervisor import group_cpu_seconds

TENANT_HEADER = "x-inferline-tenant"


def _requests(n: int) -> list[tuple[str, Any]]:
    """Answerable requests only (kinds 4..19 of the canary mix: no error paths)."""
    planted, i = Planted(), 0
    out: list[tuple[str, Any]] = []
    while len(out) < n:
        if i % 20 >= 4:
            tenant, req, _ = make_request(i, planted)
            out.append((tenant, req))
        i += 1
    return out


async def _block(stub: Any, reqs: list[tuple[str, Any]]) -> list[float]:
    out = []
    for tenant, req in reqs:
        t0 = time.perf_counter()
        await stub.Predict(req, metadata=((TENANT_HEADER, tenant),), timeout=10)
        out.append(time.perf_counter() - t0)
    return out


async def _measure(stacks: dict[str, Stack], n: int, block: int) -> dict[str, dict[str, float]]:
    reqs = _requests(n)
    lat: dict[str, list[float]] = {k: [] for k in stacks}
    cpu: dict[str, float] = dict.fromkeys(stacks, 0.0)
    channels = {k: grpc.aio.insecure_channel(s.router.address) for k, s in stacks.items()}  # type: ignore[union-attr]
    stubs = {k: inference_pb2_grpc.InferenceServiceStub(ch) for k, ch in channels.items()}
    try:
        for k in stacks:  # warmup
            await _block(stubs[k], reqs[:200])
        order = list(stacks)
        for b, start in enumerate(range(0, n, block)):
            chunk = reqs[start : start + block]
            for k in order if b % 2 == 0 else reversed(order):
                pgid = stacks[k].router.pid  # type: ignore[union-attr]
                c0 = group_cpu_seconds(pgid)
                lat[k] += await _block(stubs[k], chunk)
                cpu[k] += group_cpu_seconds(pgid) - c0
    finally:
        for ch in channels.values():
            await ch.close()
    return {
        k: {**percentiles_ms(v), "router_cpu_us": cpu[k] / len(v) * 1e6} for k, v in lat.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--block", type=int, default=250)
    args = p.parse_args(argv)
    work = (args.build / "logs" / time.strftime("compliance-e2e-%Y%m%d-%H%M%S")).resolve()
    setup = prepare(work / "on")
    on_env = {
        **setup.env,
        "INFERLINE_LOG__LEVEL": "warning",
        "INFERLINE_TRACING__EXPORTER": "none",
    }
    table = yaml.safe_load(setup.table.read_text())
    for policy in table["tenants"].values():
        if "data" in policy:
            policy["data"]["capture_ratio"] = 0.01
    setup.table.write_text(yaml.safe_dump(table))
    off_env = {
        k: v
        for k, v in on_env.items()
        if not k.startswith(("INFERLINE_PII", "INFERLINE_AUDIT", "INFERLINE_CAPTURE"))
    }
    plain = ROOT / "scripts" / "demo_routing.yaml"
    build = args.build.resolve()
    with (
        Stack(build, work / "logs-off", routing_table=plain, router_env=off_env) as off,
        Stack(build, work / "logs-on", routing_table=setup.table, router_env=on_env) as on,
    ):
        res = asyncio.run(_measure({"plain": off, "compliance on": on}, args.requests, args.block))
    command = "python -m bench.compliance_e2e " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(f"Command: `{command}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| stack | p50 | p95 | p99 | router CPU per request |\n| --- | --- | --- | --- | --- |")
    for k, r in res.items():
        print(f"| {k} | {r['p50']:.2f} ms | {r['p95']:.2f} ms | {r['p99']:.2f} ms | "
              f"{r['router_cpu_us']:.0f} us |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
