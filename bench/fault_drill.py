"""Fault drills against the real stack: inject a fault under steady load, measure.

Each drill starts its own stack (scripts.stack), sends open-loop Predict
traffic with a client deadline, injects a fault a real process produces
(SIGKILL of Triton's Python-backend stub or of Triton itself, SIGSTOP of the
Redis online store) or a traffic spike, and reports: requests sent, answered
OK, degraded by fallback level, errors by status, requests left unanswered at
their deadline (must be 0), time from the fault to the first degraded answer
(the breaker/probe reaction) and, where the fault clears, time to recover.

    python -m bench.fault_drill --build build --md docs/reliability.md \
        --json build/bench/faults.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc

from bench.delay_proxy import DelayProxy
from bench.drill_core import (
    ROUTER_ENV,
    Background,
    DrillResult,
    Outcome,
    load,
    markdown,
    one_request,
    summarize,
    write_md,
)
from bench.fail_proxy import FailProxy
from inferline.v1 import inference_pb2_grpc
from scripts.stack import ROOT, Stack, build_demo_for_redis


def _stack(build: Path, logs: Path, **kw: Any) -> Stack:
    env = {**ROUTER_ENV, **kw.pop("router_env", {})}
    return Stack(
        build, logs, routing_table=ROOT / "scripts" / "demo_routing.yaml", router_env=env, **kw
    )


Faults = Callable[[Stack], tuple[Callable[[], None], Callable[[], None] | None]]
"""Given the running stack: (inject, clear or None)."""


async def _drill(
    name: str,
    notes: str,
    faults: Faults,
    build: Path,
    logs: Path,
    rps: float,
    seconds: float,
    deadline_s: float,
    **stack_kw: Any,
) -> DrillResult:
    """Steady load; inject at 1/4 of the run (and clear at 1/2 when the fault clears)."""
    with _stack(build, logs, **stack_kw) as s:
        assert s.router is not None
        inject, clear = faults(s)
        at = {seconds / 4: inject} | ({seconds / 2: clear} if clear else {})
        out, marks = await load(
            s.router.address, rps=rps, seconds=seconds, deadline_s=deadline_s, at=at
        )
        for action in (inject, clear):
            if isinstance(action, Background):
                action.wait()
    cleared = marks.get(clear.__name__) if clear else None
    if isinstance(clear, Background):  # cleared when the restart finished, not began
        cleared = None if clear.done_at is None else clear.done_at - marks["t0"]
    r = summarize(name, out, deadline_s, marks.get(inject.__name__), cleared, notes)
    if cleared is not None:
        r.extra["fault_cleared_at_s"] = round(cleared, 2)
    return r


def _kill_stubs(s: Stack) -> tuple[Callable[[], None], None]:
    assert s.triton is not None
    triton = s.triton

    def kill_stubs() -> None:
        for pid in triton.stub_pids():
            os.kill(pid, signal.SIGKILL)

    return kill_stubs, None


def _kill_triton(s: Stack) -> tuple[Callable[[], None], None]:
    assert s.triton is not None
    pid = s.triton.pid

    def kill_triton() -> None:
        os.killpg(pid, signal.SIGKILL)

    return kill_triton, None


def _hang_redis(s: Stack) -> tuple[Callable[[], None], Callable[[], None]]:
    assert s.redis is not None
    pid = s.redis.pid

    def stop_redis() -> None:
        os.kill(pid, signal.SIGSTOP)

    def cont_redis() -> None:
        os.kill(pid, signal.SIGCONT)

    return stop_redis, cont_redis


async def drill_stub_kill(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    return await _drill(
        "SIGKILL Triton's Python-backend stubs",
        "Triton keeps reporting the models READY; the canary probe trips the breakers",
        _kill_stubs,
        build,
        logs / "stub",
        rps,
        seconds,
        deadline_s,
    )


async def drill_triton_kill(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    return await _drill(
        "SIGKILL tritonserver",
        "no Triton left: cached scores / static defaults answer",
        _kill_triton,
        build,
        logs / "triton",
        rps,
        seconds,
        deadline_s,
    )


async def drill_redis_hang(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    return await _drill(
        "SIGSTOP the Redis online store (hang), then SIGCONT",
        "defaults + feature_store_unavailable; the store breaker skips reads",
        _hang_redis,
        build,
        logs / "redis",
        rps,
        seconds,
        deadline_s,
        online_store="redis",
    )


async def _store_proxy_drill(
    name: str,
    notes: str,
    start: Callable[[DelayProxy], None],
    clear: Callable[[DelayProxy], None],
    build: Path,
    logs: Path,
    rps: float,
    seconds: float,
    deadline_s: float,
) -> DrillResult:
    """Redis reached through a DelayProxy; ``start``/``clear`` set its fault."""
    proxies: list[DelayProxy] = []

    def via_proxy(out: Path, redis_url: str) -> Path:
        proxies.append(DelayProxy(redis_url).start())
        return build_demo_for_redis(out, proxies[-1].address)

    def faults(s: Stack) -> tuple[Callable[[], None], Callable[[], None]]:
        def store_fault() -> None:
            start(proxies[0])

        def store_fault_cleared() -> None:
            clear(proxies[0])

        return store_fault, store_fault_cleared

    try:
        return await _drill(
            name,
            notes,
            faults,
            build,
            logs,
            rps,
            seconds,
            deadline_s,
            online_store="redis",
            feast_builder=via_proxy,
        )
    finally:
        for p in proxies:
            p.stop()


async def drill_slow_store(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    """Redis answers, but 50 ms late per chunk (behind a delay proxy), then recovers."""

    def slow(p: DelayProxy) -> None:
        p.delay_s = 0.05

    def fast(p: DelayProxy) -> None:
        p.delay_s = 0.0

    return await _store_proxy_drill(
        "Slow online store (Redis +50 ms per chunk behind a TCP proxy), then normal",
        "reads cut at the 20 ms feature budget: defaults + feature_store_unavailable",
        slow,
        fast,
        build,
        logs / "slow",
        rps,
        seconds,
        deadline_s,
    )


async def drill_triton_restart(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    """SIGKILL tritonserver, start it again on its ports (what Kubernetes does):
    the ladder answers meanwhile; how long after it is ready is primary back?"""

    def faults(s: Stack) -> tuple[Callable[[], None], Callable[[], None]]:
        assert s.triton is not None
        triton = s.triton
        inject, _ = _kill_triton(s)
        return inject, Background("restart_triton", triton.relaunch)

    return await _drill(
        "SIGKILL tritonserver, restarted on its ports",
        "ladder answers while Triton is down; recovery measured from Triton ready again",
        faults,
        build,
        logs / "triton-restart",
        rps,
        seconds,
        deadline_s,
    )


async def drill_blackhole_store(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    """Redis behind a proxy that swallows every byte (partition), then heals;
    every connection made after that takes 50 ms to reach Redis, several times
    the feature budget, so only a trial read judged on its own timeout (not the
    request's budget) can close the store breaker again."""

    def hole(p: DelayProxy) -> None:
        p.blackhole = True

    def heal(p: DelayProxy) -> None:
        p.connect_delay_s = 0.05
        p.blackhole = False

    return await _store_proxy_drill(
        "Black-holed online store (Redis behind a proxy that drops every byte), then "
        "healed with new connections 50 ms slow",
        "reads cut at the feature budget; the store breaker then skips them; its "
        "half-open trial (250 ms timeout) reconnects",
        hole,
        heal,
        build,
        logs / "blackhole",
        rps,
        seconds,
        deadline_s,
    )


async def drill_half_failing_backend(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    """Half of all inference calls fail (a real HTTP proxy answering 503 in front
    of Triton): upstream attempts per client request stay <= 1.1."""
    proxies: list[FailProxy] = []

    def faults(s: Stack) -> tuple[Callable[[], None], None]:
        assert s.triton is not None and s.router is not None

        def start_failing() -> None:
            proxies[0].reset_counts()
            proxies[0].fail_ratio = 0.5

        return start_failing, None

    def via_proxy(triton_http: str) -> str:
        proxies.append(FailProxy(triton_http, fail_ratio=0.0).start())
        return proxies[-1].address

    try:
        r = await _drill(
            "50% of inference calls fail (HTTP proxy answering 503 in front of Triton)",
            "the last-known-good rung spends the retry budget (9% of first attempts)",
            faults,
            build,
            logs / "half-failing",
            rps,
            seconds,
            deadline_s,
            router_env={"INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0"},
            triton_http_proxy=via_proxy,
        )
        p = proxies[0]
        counted = r.extra["sent_after_fault"]
        r.extra["upstream_infer_calls"] = p.infer_calls
        r.extra["injected_failures"] = p.failed
        r.extra["attempts_per_request"] = round(p.infer_calls / max(1, counted), 3)
        return r
    finally:
        for p in proxies:
            p.stop()


async def drill_spike(build: Path, logs: Path, deadline_s: float, seconds: float) -> DrillResult:
    """3x more concurrency than the router admits: the excess is shed at once."""
    admit = 8
    with _stack(
        build,
        logs / "spike",
        router_env={
            "INFERLINE_LIMITS__MAX_IN_FLIGHT": str(admit),
            "INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0",
        },
    ) as s:
        assert s.router is not None
        out: list[Outcome] = []
        async with grpc.aio.insecure_channel(s.router.address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            t0 = time.monotonic()
            stop = t0 + seconds

            async def worker(w: int) -> None:
                i = w
                while time.monotonic() < stop:
                    await one_request(stub, i, deadline_s, t0, out)
                    i += 3 * admit
                    if out[-1].code == "RESOURCE_EXHAUSTED":
                        await asyncio.sleep(0.002)

            await asyncio.gather(*(worker(w) for w in range(3 * admit)))
    shed = [o.latency_s for o in out if o.code == "RESOURCE_EXHAUSTED"]
    r = summarize(
        "3x spike over the admission limit",
        out,
        deadline_s,
        None,
        None,
        f"max_in_flight={admit} (standard class may use 80%), {3 * admit} callers",
    )
    r.extra["shed_median_ms"] = round(statistics.median(shed) * 1000, 3) if shed else None
    r.extra["goodput_rps"] = round(r.ok / seconds, 1)
    return r


DRILLS = (
    "stub_kill",
    "triton_kill",
    "triton_restart",
    "redis_hang",
    "slow_store",
    "blackhole_store",
    "half_failing",
    "spike",
)


async def run_all(
    build: Path,
    logs: Path,
    rps: float,
    seconds: float,
    deadline_s: float,
    only: tuple[str, ...] = DRILLS,
) -> list[DrillResult]:
    out = []
    for name in only:
        if name == "spike":
            out.append(await drill_spike(build, logs, deadline_s, seconds / 2))
        elif name == "triton_restart":  # Triton takes seconds to load its models again
            out.append(await drill_triton_restart(build, logs, rps, seconds * 2, deadline_s))
        else:
            drill = {
                "stub_kill": drill_stub_kill,
                "triton_kill": drill_triton_kill,
                "redis_hang": drill_redis_hang,
                "slow_store": drill_slow_store,
                "blackhole_store": drill_blackhole_store,
                "half_failing": drill_half_failing_backend,
            }[name]
            out.append(await drill(build, logs, rps, seconds, deadline_s))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--rps", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--deadline-ms", type=float, default=250.0)
    p.add_argument("--md", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--only", default=",".join(DRILLS), help=f"comma-separated of {DRILLS}")
    args = p.parse_args(argv)
    only = tuple(x for x in args.only.split(",") if x)
    if unknown := set(only) - set(DRILLS):
        p.error(f"unknown drills: {sorted(unknown)}")
    logs = args.build / "logs" / time.strftime("faults-%Y%m%d-%H%M%S")
    results = asyncio.run(
        run_all(
            args.build.resolve(),
            logs.resolve(),
            args.rps,
            args.seconds,
            args.deadline_ms / 1000,
            only,
        )
    )
    command = "python -m bench.fault_drill " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(results, command)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    if args.md:
        write_md(args.md, table)
    return 0 if all(r.unanswered_at_deadline == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
