"""Restart drills through the edge: Envoy and router restarts under steady load.

Each drill starts a ``scripts.edge_stack.FullStack`` (Triton, routers in edge
mode behind mTLS, Envoy + xDS control plane + rate-limit service) and sends
open-loop Predict traffic through Envoy with a tenant certificate, as a product
surface would, then restarts a component mid-run:

- **Envoy hot restart** (new epoch takes the listen sockets over; the old one
  drains): how a config-incompatible change or a new Envoy binary ships.
- **Envoy crash**: SIGKILL, then started again on its ports (the kubelet's
  restart). Requests meanwhile fail fast with UNAVAILABLE, none at its deadline.
- **Rolling router restart, two replicas**: each router in turn gets SIGTERM
  (health NOT_SERVING on both ports for good, ``server.drain_s`` of service while
  Envoy's health checks take it out and Envoy closes its connections to it, then
  a graceful stop), and is started again on its port.
- **Router restart, one replica**: the same with nobody to take over: Envoy
  answers UNAVAILABLE (no healthy upstream) until it is back.

Envoy writes an access log (``envoy.log`` in the drill's log directory); each
result says which response flags Envoy gave failed requests (``envoy_flags``:
UC, a connection the router closed under a request; UF, a connection refused;
UH, no healthy router) and Envoy's upstream counters for the router clusters
(``envoy_upstream``: retries, refused connections, connections closed under a
request).

    python -m bench.edge_drills --build build --md docs/reliability.md
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench.drill_core import (
    CHANNEL_OPTIONS,
    Background,
    DrillResult,
    load,
    markdown,
    summarize,
    write_md,
)
from inferline_edge.certs import EDGE_DNS, DevPKI
from inferline_edge.common import ROUTER_CLUSTER, ROUTER_FAST_CLUSTER
from inferline_edge.resources import ROUTER_HEALTH_INTERVAL_S
from scripts.edge_stack import FullStack, TlsRouterProcess
from scripts.stack import ROOT

TENANT_CERT = ("demo", "cli")
ROUTER_ENV = {
    "INFERLINE_LOG__LEVEL": "warning",
    "INFERLINE_FEATURES__TIMEOUT_MS": "20",
    # Keep serving 3 of Envoy's health-check intervals after NOT_SERVING, as the
    # chart does: with 2, on a loaded 2-core CI box where one check ran late, a
    # request once still reached a router after its drain.
    "INFERLINE_SERVER__DRAIN_S": str(3 * ROUTER_HEALTH_INTERVAL_S),
}

Faults = Callable[[FullStack], tuple[Callable[[], None], Callable[[], None] | None]]

UPSTREAM_COUNTERS = (
    "upstream_rq_retry",  # Envoy sent the request again (to the other router)
    "upstream_cx_connect_fail",  # a router's port refused the connection
    "upstream_cx_destroy_remote_with_active_rq",  # a router closed it under a request
)
_FLAGS = re.compile(r" grpc=(\S+) flags=(\S+) details=(\S+) ")


def upstream_counters(full: FullStack) -> dict[str, int]:
    """``UPSTREAM_COUNTERS`` summed over Envoy's two router clusters (gRPC and
    fast lane); empty if Envoy's admin port does not answer."""
    assert full.edge is not None and full.edge.envoy is not None
    try:
        stats = full.edge.envoy.stats("cluster.router")
    except OSError:
        return {}
    clusters = (ROUTER_CLUSTER, ROUTER_FAST_CLUSTER)
    return {
        name: sum(
            v
            for k, v in stats.items()
            if k.split(".")[1] in clusters and k.rpartition(".")[2] == name
        )
        for name in UPSTREAM_COUNTERS
    }


def envoy_flags(logs: Path) -> dict[str, int]:
    """Failed requests in Envoy's access logs, by response flags and details
    (e.g. ``UC:upstream_reset_before_response_started{connection_termination}``)."""
    seen: Counter[str] = Counter()
    for path in sorted(logs.glob("envoy*.log")):
        for line in path.read_text(errors="replace").splitlines():
            m = _FLAGS.search(line)
            if m and (m[2] != "-" or m[1] not in ("0", "-")):
                seen[f"{m[2]}:{m[3]}"] += 1
    return dict(seen)


def _channel_factory(pki: DevPKI, address: str) -> Callable[[], grpc.aio.Channel]:
    pair = pki.client(*TENANT_CERT)
    creds = grpc.ssl_channel_credentials(
        pki.ca.cert.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes()
    )
    options = [("grpc.ssl_target_name_override", EDGE_DNS), *CHANNEL_OPTIONS]
    return lambda: grpc.aio.secure_channel(address, creds, options)


async def _edge_drill(
    name: str,
    notes: str,
    faults: Faults,
    build: Path,
    logs: Path,
    rps: float,
    seconds: float,
    deadline_s: float,
    **full_kw: Any,
) -> DrillResult:
    """Steady load through Envoy; inject at 1/4 of the run, clear at 1/2."""
    pki = DevPKI.create(logs / "pki", tenants=[TENANT_CERT], days=1)
    full_kw.setdefault("access_log", True)  # the flags of a failed request say why
    full = FullStack(build, logs, pki, router_env=ROUTER_ENV, **full_kw)
    # From a worker thread: no preexec_fn, so no fork after this process used gRPC.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(full.start).result()
    try:
        assert full.edge is not None
        inject, clear = faults(full)
        at = {seconds / 4: inject} | ({seconds / 2: clear} if clear else {})
        out, marks = await load(
            "",
            rps=rps,
            seconds=seconds,
            deadline_s=deadline_s,
            at=at,
            open_channel=_channel_factory(pki, full.edge.mtls_address),
        )
        for action in (inject, clear):
            if isinstance(action, Background):
                await asyncio.to_thread(action.wait)
        upstream = await asyncio.to_thread(upstream_counters, full)
    finally:
        await asyncio.to_thread(full.stop)
    done = [a for a in (clear, inject) if isinstance(a, Background) and a.done_at is not None]
    cleared = (done[0].done_at - marks["t0"]) if done and done[0].done_at else None
    r = summarize(name, out, deadline_s, marks.get(inject.__name__), None, notes)
    if cleared is not None:
        r.extra["restart_done_at_s"] = round(cleared, 2)
    r.extra["fault_at_s"] = round(marks[inject.__name__], 2)
    errors_at = [o.sent_at for o in out if o.code != "OK"]
    r.extra["envoy_upstream"] = upstream
    if errors_at:  # the window in which callers saw a (clear) error status
        r.extra["error_window_s"] = round(max(errors_at) - min(errors_at), 3)
        r.extra["envoy_flags"] = envoy_flags(logs)
        ok_after = [o.sent_at for o in out if o.code == "OK" and o.sent_at > max(errors_at)]
        if ok_after:
            r.time_to_recover_s = round(min(ok_after) - marks[inject.__name__], 3)
    return r


async def drill_envoy_hot_restart(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    def faults(full: FullStack) -> tuple[Callable[[], None], None]:
        assert full.edge is not None and full.edge.envoy is not None
        return Background("envoy_hot_restart", full.edge.envoy.hot_restart_now), None

    r = await _edge_drill(
        "Envoy hot restart (new epoch takes the sockets over, old one drains)",
        "what a new Envoy binary or bootstrap change does",
        faults,
        build,
        logs / "envoy-hot",
        rps,
        seconds,
        deadline_s,
        hot_restart=True,
    )
    return r


async def drill_envoy_crash(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    def faults(full: FullStack) -> tuple[Callable[[], None], None]:
        assert full.edge is not None and full.edge.envoy is not None
        envoy = full.edge.envoy

        def kill_and_restart() -> None:
            os.killpg(envoy.pid, signal.SIGKILL)
            assert envoy.proc is not None
            envoy.proc.wait()
            envoy.relaunch()

        return Background("envoy_crash", kill_and_restart), None

    return await _edge_drill(
        "SIGKILL Envoy, started again on its ports",
        "one Envoy, no replica: callers get UNAVAILABLE at once until it is back",
        faults,
        build,
        logs / "envoy-crash",
        rps,
        seconds,
        deadline_s,
    )


def in_rotation(full: FullStack, router: TlsRouterProcess) -> bool:
    """Envoy's health checks pass for ``router`` on its router clusters (gRPC
    port; fast lane when the stack has one)."""
    assert full.edge is not None and full.edge.envoy is not None
    want = {f"{ROUTER_CLUSTER}::{router.address}::health_flags::healthy"}
    if full.fast_lane:
        want.add(f"{ROUTER_FAST_CLUSTER}::{router.bridge_address}::health_flags::healthy")
    try:
        lines = set(full.edge.envoy.admin("/clusters", timeout=1.0).decode().splitlines())
    except OSError:
        return False
    return want <= lines


def _restart_routers(full: FullStack, settle_s: float = 0.5, timeout_s: float = 10.0) -> None:
    """SIGTERM each router in turn and start it again. Before the next one goes,
    Envoy must have the restarted one back in rotation (as a rollout waits for
    the new pod to be ready), then ``settle_s`` more: a fixed pause can be
    outrun by a health check on a loaded box."""
    for i, router in enumerate(full.routers):
        if i:
            end = time.monotonic() + timeout_s
            while not in_rotation(full, full.routers[i - 1]) and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(settle_s)
        router.stop()
        router.relaunch()


async def drill_router_rolling_restart(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    def faults(full: FullStack) -> tuple[Callable[[], None], None]:
        return Background("rolling_restart", lambda: _restart_routers(full)), None

    return await _edge_drill(
        "Rolling restart of two routers behind Envoy (SIGTERM, drain, start again)",
        "health NOT_SERVING -> Envoy's 0.5 s health checks (gRPC; HTTP on the fast "
        "lane) take it out; retries on refused/reset streams go to the other replica",
        faults,
        build,
        logs / "router-rolling",
        rps,
        seconds * 2,
        deadline_s,
        replicas=2,
    )


async def drill_router_single_restart(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    def faults(full: FullStack) -> tuple[Callable[[], None], None]:
        return Background("single_restart", lambda: _restart_routers(full)), None

    return await _edge_drill(
        "Restart of the only router behind Envoy",
        "nobody to take over: Envoy answers UNAVAILABLE (no healthy upstream) at once",
        faults,
        build,
        logs / "router-single",
        rps,
        seconds * 2,
        deadline_s,
    )


async def run_all(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> list[DrillResult]:
    return [
        await drill_envoy_hot_restart(build, logs, rps, seconds, deadline_s),
        await drill_envoy_crash(build, logs, rps, seconds, deadline_s),
        await drill_router_rolling_restart(build, logs, rps, seconds, deadline_s),
        await drill_router_single_restart(build, logs, rps, seconds, deadline_s),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--rps", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--deadline-ms", type=float, default=250.0)
    p.add_argument("--md", type=Path)
    args = p.parse_args(argv)
    logs = args.build / "logs" / time.strftime("edge-drills-%Y%m%d-%H%M%S")
    results = asyncio.run(
        run_all(
            args.build.resolve(), logs.resolve(), args.rps, args.seconds, args.deadline_ms / 1000
        )
    )
    command = "python -m bench.edge_drills " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(results, command)
    print(table)
    if args.md:
        write_md(args.md, table, "edge-drills")
    return 0 if all(r.unanswered_at_deadline == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
